//! `--config` files as a user may write them: any text gives a config or an
//! error naming the file, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = clb_cli::config_file::parse(Path::new("clb.toml"), &text) {
        assert!(e.to_string().starts_with("clb.toml"), "{e}");
    }
});
