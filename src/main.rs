fn main() {
    println!("ftpct: under construction");
}
