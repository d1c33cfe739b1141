mod common;

use std::time::Instant;

use common::*;
use stockade_jail::JailKind;

#[test]
fn run_returns_the_exit_code_and_leaves_nothing() {
    if !root_or_skip("run_returns_the_exit_code_and_leaves_nothing") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("smoke", JailKind::App, &[], small_limits());
    let t = Instant::now();
    let code = f.engine.run(&spec, &["/bin/true".into()]).unwrap();
    eprintln!("run /bin/true took {:?}", t.elapsed());
    assert_eq!(code, 0);
    let spec = f.spec("smoke", JailKind::App, &[], small_limits());
    assert_eq!(
        f.engine
            .run(&spec, &["sh".into(), "-c".into(), "echo hi; exit 7".into()])
            .unwrap(),
        7
    );
}
