//! Decodes one review body N times (and, given a policy file or directory, evaluates it and
//! writes the answer each time, as the handler does), for instruction counts that do not
//! drift with the machine's load (`valgrind --tool=callgrind`), and for quick wall-clock
//! checks:
//!
//! ```sh
//! cargo build --release --example decode_loop
//! valgrind --tool=callgrind target/release/examples/decode_loop examples/reviews/create-3-replicas.json 2000
//! valgrind --tool=callgrind target/release/examples/decode_loop pod.json 200 policies/examples/cel.yaml
//! ```
//!
//! Prints how many decodes succeeded.

use futures_util::FutureExt;
use gatehouse::admission;
use gatehouse::policy::PolicySet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (file, times, policies) = match args.as_slice() {
        [_, file, times] => (file, times, None),
        [_, file, times, policies] => (file, times, Some(policies)),
        _ => return Err("usage: decode_loop REVIEW.json TIMES [POLICY_FILE_OR_DIR]".into()),
    };
    let body = std::fs::read(file)?;
    let times: usize = times.parse()?;
    let policies = policies
        .map(|p| PolicySet::load(Some(std::path::Path::new(p)), vec!["kube-system".into()]))
        .transpose()?;
    let mut ok = 0;
    for _ in 0..times {
        let Ok(req) = admission::decode(std::hint::black_box(&body)) else {
            continue;
        };
        if let Some(policies) = &policies {
            let decision = policies
                .evaluate(&req)
                .now_or_never()
                .ok_or("these policies wait for I/O")?;
            std::hint::black_box(admission::answer(&req, &decision));
        }
        ok += 1;
    }
    println!("{ok}");
    Ok(())
}
