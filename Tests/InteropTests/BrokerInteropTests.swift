import Foundation
import Testing
import UnibusTestSupport
import UnibusCrypto

/// The broker against code we did not write: nats-server (byte transcripts),
/// nats-py and the Go NATS client. Each peer script prints per-scenario lines
/// and exits non-zero on any failure (3 when its library is missing).
@Suite("Broker interop: nats-server transcripts, nats-py, Go client", .serialized)
struct BrokerInteropTests {
    static var unibusd: String {
        ProcessInfo.processInfo.environment["UNIBUSD_BIN"]
            ?? Peer.packageRoot.appendingPathComponent(".build/debug/unibusd").path
    }

    private func runPeer(_ command: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
        guard FileManager.default.isExecutableFile(atPath: Self.unibusd) else {
            throw Peer.Failure(description: "no unibusd at \(Self.unibusd): run `swift build` first")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        var arguments = environment.map { "\($0.key)=\($0.value)" }
        arguments += command
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func sameRepliesAsNatsServerForTheSameBytes() throws {
        let script = Peer.packageRoot.appendingPathComponent("Tests/InteropTests/peers/transcripts.py").path
        let (status, output) = try runPeer(["python3", script, Self.unibusd])
        #expect(status == 0, "\(output)")
        #expect(output.contains(" passed, 0 failed"))
    }

    /// Runs a peer script against the bin directory holding unibusd and
    /// unibus; it prints one line per check and "N passed, N failed".
    private func runScenario(_ script: String) throws {
        let path = Peer.packageRoot.appendingPathComponent("Tests/InteropTests/peers/" + script).path
        let binDirectory = (Self.unibusd as NSString).deletingLastPathComponent
        let (status, output) = try runPeer(["python3", path, binDirectory])
        #expect(status == 0, "\(output)")
        #expect(output.contains(" passed, 0 failed"), "\(output)")
    }

    @Test func natsPyClient() throws {
        let script = Peer.packageRoot.appendingPathComponent("Tests/InteropTests/peers/natspy_broker.py").path
        let (status, output) = try runPeer(["python3", script, Self.unibusd])
        #expect(status == 0, "\(output)")
        #expect(output.contains("7 passed, 0 failed"), "\(output)")
    }

    @Test func goClientFromDebianSources() throws {
        let source = Peer.packageRoot.appendingPathComponent("Tests/InteropTests/peers/gonats").path
        let binary = NSTemporaryDirectory() + "unibus-gonats-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: binary) }
        let environment = ["GOPATH": "/usr/share/gocode", "GO111MODULE": "off",
                           "GOCACHE": NSTemporaryDirectory() + "unibus-gocache", "GOFLAGS": ""]
        let (buildStatus, buildOutput) = try runPeer(["sh", "-c", "cd '\(source)' && go build -o '\(binary)' ."], environment: environment)
        #expect(buildStatus == 0, "building the Go client failed (apt-get install golang-go golang-github-nats-io-go-nats-dev): \(buildOutput)")
        guard buildStatus == 0 else { return }
        let (status, output) = try runPeer([binary, "interop", Self.unibusd])
        #expect(status == 0, "\(output)")
        #expect(output.contains("6 passed, 0 failed"), "\(output)")
    }

    /// A node whose stderr pipe was closed keeps serving and stops cleanly:
    /// a failed log write is a dropped line, never SIGPIPE or a trap
    /// (`unibusd … 2>&1 | head -1` used to kill it with SIGILL).
    @Test func aClosedLogPipeDoesNotKillTheNode() throws {
        let port = freePort()
        let node = Process()
        node.executableURL = URL(fileURLWithPath: Self.unibusd)
        node.arguments = ["run", "--listen", "127.0.0.1:\(port)"]
        let logs = Pipe()
        node.standardError = logs
        node.standardOutput = FileHandle.nullDevice
        try logs.fileHandleForReading.close()   // the reader is gone before the node writes a line
        try node.run()
        var served = false
        let deadline = Date().addingTimeInterval(10)
        while !served && Date() < deadline && node.isRunning {
            if let client = connectLoopback(port) {
                var buffer = [UInt8](repeating: 0, count: 5)
                served = recv(client, &buffer, 5, Int32(MSG_WAITALL)) == 5 && buffer == Array("INFO ".utf8)
                close(client)
            }
            if !served { usleep(50_000) }
        }
        #expect(served, "the node served INFO with its stderr closed")
        node.terminate()   // SIGTERM: it logs "shutting down" into the closed pipe
        node.waitUntilExit()
        #expect(node.terminationReason == .exit && node.terminationStatus == 0,
                "exit \(node.terminationStatus), reason \(node.terminationReason == .exit ? "exit" : "signal")")
    }

    /// SIGTERM at any moment of start-up stops the node (it once stayed up
    /// after a SIGTERM sent right after start).
    @Test func sigtermDuringStartUpStopsTheNode() throws {
        for attempt in 0..<8 {
            let node = Process()
            node.executableURL = URL(fileURLWithPath: Self.unibusd)
            node.arguments = ["run", "--listen", "127.0.0.1:0"]
            node.standardError = FileHandle.nullDevice
            node.standardOutput = FileHandle.nullDevice
            try node.run()
            usleep(UInt32(attempt) * 40_000)   // 0 to 280 ms into start-up
            node.terminate()
            let deadline = Date().addingTimeInterval(10)
            while node.isRunning && Date() < deadline { usleep(10_000) }
            #expect(!node.isRunning, "SIGTERM \(attempt * 40) ms after start was lost")
            if node.isRunning {
                kill(node.processIdentifier, SIGKILL)
                node.waitUntilExit()
            }
        }
    }

    /// Careless input to unibusd is refused by name and leaves nothing
    /// behind; a data directory is locked while a node uses it.
    @Test func unibusdRefusesLooseInput() throws {
        let work = NSTemporaryDirectory() + "unibus-loose-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: work) }
        let (badRoot, badRootOutput) = try runPeer([Self.unibusd, "init", "--data-dir", work + "/a", "--root", "UABC"])
        #expect(badRoot != 0 && badRootOutput.contains("--root must be"), "\(badRootOutput)")
        #expect(!FileManager.default.fileExists(atPath: work + "/a"), "a refused init left a directory behind")
        let rootOnly = work + "/r"
        let rootKey = Identity().userNKey
        let (rootInit, rootInitOutput) = try runPeer([Self.unibusd, "init", "--data-dir", rootOnly, "--root", rootKey])
        #expect(rootInit == 0, "\(rootInitOutput)")
        let (noRoutes, noRoutesOutput) = try runPeer([Self.unibusd, "run", "--data-dir", rootOnly, "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        #expect(noRoutes != 0 && noRoutesOutput.contains("gets its users from the cluster, but this node has no --routes"), "\(noRoutesOutput)")
        let (uninitialised, runOutput) = try runPeer([Self.unibusd, "run", "--data-dir", work + "/b", "--listen", "127.0.0.1:0"])
        #expect(uninitialised != 0 && runOutput.contains("is not a node's data directory"), "\(runOutput)")
        #expect(!FileManager.default.fileExists(atPath: work + "/b"), "run on an uninitialised directory created files")
        let (badAdvertise, advertiseOutput) = try runPeer([Self.unibusd, "run", "--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0",
                                                           "--cluster-allow-plaintext", "--advertise", "foo bar"])
        #expect(badAdvertise != 0 && advertiseOutput.contains("--advertise must be"), "\(advertiseOutput)")
        // [::1] is loopback: plain TCP is allowed there, so the run gets as far as
        // the data directory (which does not exist) instead of refusing plaintext.
        let (ipv6, ipv6Output) = try runPeer([Self.unibusd, "run", "--listen", "[::1]:0", "--data-dir", work + "/none"])
        #expect(ipv6 != 0 && ipv6Output.contains("is not a node's data directory") && !ipv6Output.contains("refusing plain TCP"),
                "IPv6 loopback is loopback: \(ipv6Output)")

        // TLS file mistakes are named (NIOSSL says noSuchFilesystemObject / failedToLoadPrivateKey).
        let makeCerts = Peer.packageRoot.appendingPathComponent("deploy/make-certs.sh").path
        let (made, madeOutput) = try runPeer(["bash", makeCerts, work + "/certs", "a=127.0.0.1", "b=127.0.0.1"])
        #expect(made == 0, "\(madeOutput)")
        let certs = work + "/certs/"
        // A FIFO would make a plain read wait forever for a writer.
        #expect(mkfifo(certs + "fifo.pem", 0o600) == 0)
        // A CA in DER (as some CAs hand them out) is named as the CA file's problem.
        let (converted, convertedOutput) = try runPeer(["openssl", "x509", "-in", certs + "client-ca.pem", "-outform", "der", "-out", certs + "ca.der"])
        #expect(converted == 0, "\(convertedOutput)")
        for (arguments, expected) in [
            (["--tls-cert", certs + "none.pem", "--tls-key", certs + "a-client.key"], "no file at \(certs)none.pem (--tls-cert)"),
            (["--tls-cert", certs + "fifo.pem", "--tls-key", certs + "a-client.key"], "\(certs)fifo.pem is not a regular file (--tls-cert)"),
            (["--tls-cert", certs + "a-client.pem", "--tls-key", certs + "fifo.pem"], "\(certs)fifo.pem is not a regular file (--tls-key)"),
            (["--tls-cert", certs + "a-client.pem", "--tls-key", certs + "a-client.key", "--tls-client-ca", certs + "ca.der"],
             "\(certs)ca.der (--tls-client-ca) holds no PEM certificate"),
            (["--tls-cert", certs + "a-client.pem", "--tls-key", certs + "b-client.key"], "check that the two files belong together"),
            (["--tls-cert", certs + "a-client.key", "--tls-key", certs + "a-client.key"], "holds no PEM certificate"),
        ] {
            let (status, output) = try runPeer(["timeout", "30", Self.unibusd, "run", "--listen", "127.0.0.1:0"] + arguments)
            #expect(status != 0 && output.contains(expected) && !output.contains("Usage"), "\(arguments): \(output)")
        }
        // Route CA mistakes: a route certificate the cluster CA did not issue (the node
        // would never link), a cluster CA that issued the client-facing certificate,
        // and a client CA bundle that holds the cluster CA (not the same bytes).
        let bundle = try String(contentsOfFile: certs + "client-ca.pem", encoding: .utf8)
            + String(contentsOfFile: certs + "cluster-ca.pem", encoding: .utf8)
        try bundle.write(toFile: certs + "bundle.pem", atomically: true, encoding: .utf8)
        for (arguments, expected) in [
            (["--cluster-cert", certs + "a-route.pem", "--cluster-key", certs + "a-route.key", "--cluster-ca", certs + "client-ca.pem"],
             "was not issued by --cluster-ca"),
            (["--tls-cert", certs + "a-route.pem", "--tls-key", certs + "a-route.key", "--cluster-cert", certs + "a-route.pem",
              "--cluster-key", certs + "a-route.key", "--cluster-ca", certs + "cluster-ca.pem"], "it is the client CA"),
            (["--cluster-cert", certs + "a-route.pem", "--cluster-key", certs + "a-route.key", "--cluster-ca", certs + "fifo.pem"],
             "\(certs)fifo.pem is not a regular file (--cluster-ca)"),
            (["--tls-cert", certs + "a-client.pem", "--tls-key", certs + "a-client.key", "--tls-client-ca", certs + "bundle.pem",
              "--cluster-cert", certs + "a-route.pem", "--cluster-key", certs + "a-route.key", "--cluster-ca", certs + "cluster-ca.pem"],
             "it holds the cluster CA"),
        ] {
            // Bounded: a check that regressed would start a node that runs on.
            let (status, output) = try runPeer(["timeout", "30", Self.unibusd, "run", "--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"] + arguments)
            #expect(status != 0 && output.contains(expected), "\(arguments): \(output)")
        }
        // A port in use is named with its listener.
        let (holder, busy) = boundLoopbackSocket(listening: true)
        defer { close(holder) }
        let (inUse, inUseOutput) = try runPeer([Self.unibusd, "run", "--listen", "127.0.0.1:\(busy)"])
        #expect(inUse != 0 && inUseOutput.contains("cannot open the client listener (--listen) on 127.0.0.1:\(busy): the address is already in use"),
                "\(inUseOutput)")

        // init against the data directory of a running node is refused (the node holds its lock).
        let (initialised, initOutput) = try runPeer([Self.unibusd, "init", "--data-dir", work + "/c", "--admin-identity", work + "/admin.json"])
        #expect(initialised == 0, "\(initOutput)")
        // Wait until the node listens (it holds the lock from then on): an
        // init racing its start could take the lock first and stop it.
        let nodePort = freePort()
        let node = Process()
        node.executableURL = URL(fileURLWithPath: Self.unibusd)
        node.arguments = ["run", "--data-dir", work + "/c", "--listen", "127.0.0.1:\(nodePort)", "--control-listen", "127.0.0.1:0"]
        node.standardError = FileHandle.nullDevice
        node.standardOutput = FileHandle.nullDevice
        try node.run()
        defer {
            node.terminate()
            node.waitUntilExit()
        }
        let listening = Date().addingTimeInterval(10)
        var up = false
        while !up && Date() < listening && node.isRunning {
            if let client = connectLoopback(nodePort) {
                close(client)
                up = true
            } else {
                usleep(20_000)
            }
        }
        #expect(up, "the node did not start")
        var refusal = ""
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline && node.isRunning {
            let (status, output) = try runPeer([Self.unibusd, "init", "--data-dir", work + "/c", "--admin-identity", work + "/other.json"])
            if status != 0 && output.contains("is using") {
                refusal = output
                break
            }
            usleep(100_000)
        }
        #expect(refusal.contains("another unibusd"), "init on a running node's directory was not refused: \(refusal)")
    }

    @Test func unibusdRefusesPlaintextOffLoopback() throws {
        let (status, output) = try runPeer([Self.unibusd, "run", "--listen", "0.0.0.0:0"])
        #expect(status != 0)
        #expect(output.contains("refusing plain TCP on 0.0.0.0"), "\(output)")
        let (mismatch, mismatchOutput) = try runPeer([Self.unibusd, "run", "--tls-cert", "/nonexistent.pem"])
        #expect(mismatch != 0)
        #expect(mismatchOutput.contains("--tls-cert and --tls-key go together"), "\(mismatchOutput)")
    }

    /// The admin CLI against a running node with TLS on both planes, and
    /// nats-py observing membership changes live (admin_e2e.py).
    @Test func adminCLIAgainstARunningNode() throws {
        try runScenario("admin_e2e.py")
    }

    /// `unibus check` (golden and loop across a kill -9 and restart) and the
    /// README demo against a real node with TLS on both planes (check_e2e.py).
    @Test func unibusCheckAndDemoAgainstARealNode() throws {
        try runScenario("check_e2e.py")
    }

    /// Every attack of the hostile-input issue against a real unibusd:
    /// absurd headers, slow-loris, reserved namespaces, policy ranges, a
    /// second CONNECT, pre-auth floods, SUB floods, forged replies, route
    /// impersonation and interest floods, far-future log positions, and
    /// connection churn; the node serves after each (hostile_e2e.py).
    @Test func hostileInputAgainstARealNode() throws {
        try runScenario("hostile_e2e.py")
    }

    /// The README's cluster example, run as written on 127.0.0.1-3 with
    /// free ports (readme_cluster.py): the block a newcomer pastes works.
    @Test func theReadmeClusterExampleRuns() throws {
        try runScenario("readme_cluster.py")
    }

    /// Node operations through three real nodes: signed beats in `unibus node
    /// list` and nats-py, the Command Center in headless chromium (a killed
    /// node turns stale), a live settings command with its signed result, a
    /// replayed command refused and counted, the VaultMesh agent contract
    /// against Python implementations of both sides, and a signed drain (ops_e2e.py).
    @Test func nodeOperations() throws {
        try runScenario("ops_e2e.py")
    }

    /// Three unibusd processes as one cluster: mTLS routes, replicated
    /// membership, nats-py across nodes, UnibusClient failover under kill -9
    /// of the subscriber's and the publisher's node (cluster_e2e.py).
    @Test func threeNodeClusterOnLoopback() throws {
        try runScenario("cluster_e2e.py")
    }

    /// Persisted rooms through three unibusd processes: acknowledged sends,
    /// history on every node, catch-up after kill -9, retention, joined and
    /// shared history, removal, the spool across a client restart, kill -9
    /// mid-burst, and the loss loop across failovers (persist_e2e.py).
    @Test func persistedRoomsAcrossACluster() throws {
        try runScenario("persist_e2e.py")
    }

    /// A partition between real hosts (network namespaces, veth pairs,
    /// bridges): changes on both sides, a conflict, healing, convergence
    /// (partition_e2e.py; needs root for `ip netns`, which CI runs as).
    @Test func partitionAndHealConverge() throws {
        try runScenario("partition_e2e.py")
    }

    /// A node run from a configuration file with environment overrides, a
    /// flag, `file://` and `env://` references; start errors naming file,
    /// key and problem; JSON logs without secrets; swift-prometheus
    /// metrics; SIGHUP all or nothing (a renewed certificate, a refused
    /// restart-only change, a signed command above the file); SIGTERM and
    /// `unibusd drain` exit 0 (config_e2e.py).
    @Test func configurationReloadAndLifecycle() throws {
        try runScenario("config_e2e.py")
    }

    /// A rolling restart of three nodes in lame duck (SIGUSR2) under
    /// `unibus check --mode loop`: the persisted room loses nothing, the
    /// other loop reports its count; a peer of another route protocol
    /// version is refused naming both (lifecycle_e2e.py).
    @Test func rollingRestartInLameDuck() throws {
        try runScenario("lifecycle_e2e.py")
    }

    /// deploy/deploy-cluster.sh: refused with a placeholder left, a dry run
    /// that writes nothing, an apply into per-node directories (modes, no
    /// admin secret on a node, idempotent re-run) whose three nodes serve
    /// from their deployed configuration, a real-path apply as root in a
    /// private mount namespace serving as user unibus, and the installed
    /// unit through `systemd-analyze verify` (deploy_e2e.py).
    @Test func deployScriptAndUnit() throws {
        try runScenario("deploy_e2e.py")
    }

    /// Workload login checks against tokens PyJWT made: RS256, ES256 and
    /// EdDSA logins, and the known JWT attacks refused by name (jwt_e2e.py).
    @Test func workloadLoginTokens() throws {
        try runScenario("jwt_e2e.py")
    }

    /// Workload login through a three-node cluster: roles from the CLI,
    /// RS256/ES256/EdDSA logins that use the bus, the JWT attacks refused by
    /// name, forged logins injected over a route refused by every node and
    /// a client, expiry closing connections on every node (workload_e2e.py).
    @Test func workloadLoginCluster() throws {
        try runScenario("workload_e2e.py")
    }
}

/// A TCP socket bound to 127.0.0.1 on a port the kernel chose (listening
/// when asked), and that port; the caller closes it.
private func boundLoopbackSocket(listening: Bool) -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && (!listening || listen(fd, 1) == 0) && getsockname(fd, $0, &length) == 0
        }
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A loopback port that was free a moment ago (see `freeLoopbackPort`).
private func freePort() -> Int { freeLoopbackPort() }

/// A TCP connection to 127.0.0.1:`port`, or nil (the caller closes it).
private func connectLoopback(_ port: Int) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var target = sockaddr_in()
    target.sin_family = sa_family_t(AF_INET)
    target.sin_port = in_port_t(UInt16(port).bigEndian)
    target.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &target) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    if connected { return fd }
    close(fd)
    return nil
}
