//! The configuration parser on arbitrary TOML: a bad file is a list of problems
//! naming their keys, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use microclaw::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| Some("fuzz-secret".to_owned());
    let _ = Settings::from_toml(text, &env);
});
