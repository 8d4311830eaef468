//! Config parsing and validation: any text gives a runtime or a list of problems, never
//! a panic (problems carry lines, so line lookup is exercised too).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use riskgate::state::KeyHasher;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent/riskgate-fuzz/riskgate.toml");
    match riskgate::config::parse(path, text) {
        Ok(file) => {
            if let Ok(rt) = riskgate::runtime::build(&file, path, text, &KeyHasher::seeded(1)) {
                let _ = rt.summary();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
