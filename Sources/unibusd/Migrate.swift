import ArgumentParser
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore

/// `unibusd migrate`: turns a data directory from before causal order into
/// one whose log starts from a checkpoint the root admin signs.
struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrate a stopped node's membership log to the causally signed form (once, after upgrading unibusd).",
        discussion: """
        Logs written before causal order were ordered by positions the nodes chose, which nobody signed and \
        clients cannot verify. This folds that log in its old order and has the root admin sign the result \
        as a checkpoint; the new log starts there. The old operations stay in the store for audit. The \
        checkpoint is deterministic: nodes that held the same log print the same checkpoint id. Migrate every \
        node (or migrate one and re-initialise the others with `unibusd init --root` so they copy it).
        """
    )

    @Option(name: .long, help: "The node's data directory (the node must be stopped).")
    var dataDir: String

    @Option(name: .long, help: "The root admin's identity file (the admin who ran `unibusd init`).")
    var adminIdentity: String

    func run() throws {
        let root: Identity
        do {
            root = try IdentityFile.load(from: adminIdentity)
        } catch {
            throw CLIFailure("\(error)")
        }
        let report: MigrationReport
        do {
            report = try MembershipStore.migrate(directory: dataDir, root: root)
        } catch {
            throw CLIFailure("\(error)")
        }
        print("migrated \(dataDir): \(report.legacyOperations) operations (\(report.refused) refused by the rules, as before)")
        print("checkpoint: \(report.checkpointID)")
        print("state digest: \(report.stateDigest)")
    }
}
