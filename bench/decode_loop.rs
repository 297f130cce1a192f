//! Decodes one review body N times, for instruction counts that do not drift with the
//! machine's load (`valgrind --tool=callgrind`), and for quick wall-clock checks:
//!
//! ```sh
//! cargo build --release --example decode_loop
//! valgrind --tool=callgrind target/release/examples/decode_loop examples/reviews/create-3-replicas.json 2000
//! ```
//!
//! Prints how many decodes succeeded.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, times] = args.as_slice() else {
        return Err("usage: decode_loop REVIEW.json TIMES".into());
    };
    let body = std::fs::read(file)?;
    let times: usize = times.parse()?;
    let mut ok = 0;
    for _ in 0..times {
        if gatehouse::admission::decode(std::hint::black_box(&body)).is_ok() {
            ok += 1;
        }
    }
    println!("{ok}");
    Ok(())
}
