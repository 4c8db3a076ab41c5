import ArgumentParser
import UnibusCrypto
#if canImport(Glibc)
@preconcurrency import Glibc
#else
@preconcurrency import Darwin
#endif

/// Entry point: SIGPIPE is ignored before anything starts (a closed stderr
/// pipe must not kill the node; a failed log write drops the line), and
/// standard output is line-buffered.
@main
struct UnibusdMain {
    static func main() async {
        signal(SIGPIPE, SIG_IGN)
        // Every file the node creates (stores, identities, spools) is its own.
        umask(0o077)
        setvbuf(stdout, nil, _IOLBF, 0)
        await Unibusd.main()
    }
}

/// The Unibus node: the embedded NATS-protocol broker with membership and
/// the control plane (`run`, the default), bootstrap and a crypto self-check.
struct Unibusd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unibusd",
        abstract: "The Unibus node: an end-to-end encrypted message bus.",
        version: UnibusVersion.current,
        subcommands: [Run.self, Init.self, Migrate.self, Config.self, Drain.self, SelfCheck.self, Debug.self],
        defaultSubcommand: Run.self
    )
}

struct SelfCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "self-check",
        abstract: "Run known-answer tests of the linked crypto libraries and Megolm; exit 1 on any failure."
    )

    func run() throws {
        let results = CryptoSelfCheck.run()
        for result in results {
            print("\(result.passed ? "ok  " : "FAIL") \(result.name): \(result.detail)")
        }
        let failed = results.filter { !$0.passed }.count
        print("\(results.count - failed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}
