import ArgumentParser
import UnibusCrypto

/// The Unibus node. Today: the embedded NATS-protocol broker (`run`, the
/// default) and a crypto self-check; membership and the control plane follow.
@main
struct Unibusd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unibusd",
        abstract: "The Unibus node: an end-to-end encrypted message bus.",
        version: UnibusVersion.current,
        subcommands: [Run.self, Init.self, SelfCheck.self, Debug.self],
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
