//! A Varnish of the test's own (`infra/varnish/addonreg.vcl`) in front of
//! the test's gateways, on a free port, with its own working directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::free_port;

/// The `backends.vcl` that `infra/varnish/addonreg.vcl` includes: one
/// backend per gateway `host:port`, probed on `/__lbheartbeat__`, with the
/// fetch timeouts the purger's repeat must outlast (`docs/edge.md`).
pub fn backends_vcl(gateways: &[String]) -> String {
    let mut vcl = String::new();
    for (i, gateway) in gateways.iter().enumerate() {
        let (host, port) = gateway.rsplit_once(':').expect("host:port");
        vcl.push_str(&format!(
            "backend gw{i} {{\n    .host = \"{host}\";\n    .port = \"{port}\";\n    \
             .connect_timeout = 1s;\n    .first_byte_timeout = 5s;\n    \
             .between_bytes_timeout = 2s;\n    .probe = {{ .url = \"/__lbheartbeat__\"; \
             .interval = 1s; .timeout = 500ms; .window = 3; .threshold = 2; .initial = 3; }}\n}}\n"
        ));
    }
    vcl.push_str("sub vcl_init {\n");
    for i in 0..gateways.len() {
        vcl.push_str(&format!("    gateways.add_backend(gw{i});\n"));
    }
    vcl.push_str("}\n");
    vcl
}

/// A running `varnishd`, stopped on drop.
pub struct TestVarnish {
    child: Child,
    dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl TestVarnish {
    /// Starts Varnish with the repository's VCL in front of `gateways`
    /// (`host:port` each) and waits until it answers.
    pub async fn start(gateways: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("addonreg-varnish-{}", crate::unique()));
        std::fs::create_dir_all(&dir).expect("varnish dir");
        std::fs::write(dir.join("backends.vcl"), backends_vcl(gateways)).expect("backends.vcl");
        let vcl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/varnish/addonreg.vcl");
        let vcl = vcl.canonicalize().expect("infra/varnish/addonreg.vcl");
        let port = free_port();
        let child = Command::new("varnishd")
            .args([
                "-F",
                "-j",
                "none",
                "-n",
                dir.join("work").to_str().expect("UTF-8 path"),
                "-a",
                &format!("127.0.0.1:{port}"),
                "-T",
                "none",
                "-f",
                vcl.to_str().expect("UTF-8 path"),
                "-p",
                &format!("vcl_path={}", dir.display()),
                "-s",
                "malloc,64m",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start varnishd (apt-get install varnish varnish-modules)");
        let varnish = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Any answer will do: it listens once the VCL is loaded.
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("{}/__lbheartbeat__", varnish.url))
            .send()
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "varnishd did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        varnish
    }
}

impl Drop for TestVarnish {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
