//! The second process of the multi-process Sandbox API tests (`tests/sandbox_api.rs`):
//! `sandbox_child CONFIG create SANDBOX_JSON` creates a sandbox, says so and waits to be
//! killed; `sandbox_child CONFIG exec SANDBOX_ID` runs four processes in container `c1`.

use hypervisor_kvm as _;
use hypervisor_qemu as _;
use runtime_core::sandbox::{ProcessConfig, Runtime, SandboxConfig};
use storage_fs as _;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, role, arg] = args.as_slice() else {
        eprintln!("usage: sandbox_child CONFIG create SANDBOX_JSON | CONFIG exec SANDBOX_ID");
        std::process::exit(2);
    };
    integration_tests::log_warnings();
    let runtime = Runtime::from_file(config.as_ref()).expect("runtime");
    match role.as_str() {
        "create" => {
            let sandbox: SandboxConfig = serde_json::from_str(arg).expect("sandbox JSON");
            let sb = runtime.create_sandbox(sandbox).await.expect("CreateSandbox in the child");
            println!("created {}", sb.id());
            std::future::pending::<()>().await; // the parent kills us here
        }
        "exec" => {
            let sb = runtime.fetch_sandbox(arg).await.expect("FetchSandbox in the child");
            for i in 0..4 {
                let p = sb.enter_container("c1", ProcessConfig::new(["sh", "-c", &format!("exit {}", 20 + i)])).await.expect("exec");
                assert_eq!(sb.wait_process("c1", &p.token).await.expect("wait"), 20 + i);
                println!("token {}", p.token);
            }
        }
        other => panic!("unknown role {other}"),
    }
}
