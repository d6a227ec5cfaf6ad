fn main() {
    println!("dnsbridge skeleton");
}
