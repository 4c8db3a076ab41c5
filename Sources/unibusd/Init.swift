import ArgumentParser
import Foundation
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore

/// `unibusd init`: the offline bootstrap of a node's data directory with its
/// first admin (the node must not be running). Every later change goes
/// through the running node.
struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a data directory with its first admin (offline bootstrap).")

    @Option(name: .long, help: "The node's data directory (created 0700).")
    var dataDir: String

    @Option(name: .long, help: "The admin's identity file; created (0600) if it does not exist.")
    var adminIdentity: String?

    @Option(name: .long, help: "Instead of --admin-identity: only the root admin's user nkey (U…), for a node of a cluster that receives its membership log from its peers and never holds the admin's key.")
    var root: String?

    @Option(name: .long, help: "The admin's handle.")
    var handle = "admin"

    func run() throws {
        if let root {
            guard adminIdentity == nil else { throw CLIFailure("give --admin-identity or --root, not both") }
            // Checked before anything is created: a refused init leaves nothing behind.
            guard (try? NKey.decodePublicKey(root, expecting: .user)) != nil else {
                throw CLIFailure("--root must be the root admin's user nkey (U…, `unibus identity nkey --identity ADMIN.json`); "
                                 + (root.hasPrefix("S") ? "this looks like a seed (a secret): never give it to a node" : "this is not one"))
            }
            do {
                let store = try MembershipStore(directory: dataDir)
                try store.pinRoot(root)
                _ = try IdentityFile.loadOrCreate(at: dataDir + "/node-identity.json")
            } catch {
                throw CLIFailure("\(error)")
            }
            print("initialised \(dataDir) for root admin \(root); its users arrive from the cluster (run with --routes)")
            return
        }
        guard let adminIdentity else { throw CLIFailure("give --admin-identity FILE (the first admin) or --root NKEY (a cluster node)") }
        // The store first: it takes the data directory's lock, so an init
        // refused because a node runs there creates no identity file either.
        let store: MembershipStore
        do {
            store = try MembershipStore(directory: dataDir)
        } catch {
            throw CLIFailure("\(error)")
        }
        let admin: Identity
        let created: Bool
        do {
            (admin, created) = try IdentityFile.loadOrCreate(at: adminIdentity)
            _ = try IdentityFile.loadOrCreate(at: dataDir + "/node-identity.json")
        } catch {
            throw CLIFailure("\(error)")
        }
        guard store.snapshot.users.isEmpty else {
            if store.snapshot.users[admin.userNKey] != nil {
                throw CLIFailure("already registered: \(admin.userNKey) is already a user of \(dataDir); nothing was changed")
            }
            throw CLIFailure("\(dataDir) is already initialised (\(store.snapshot.users.count) users); add admins through the running node")
        }
        // The log's first operation names no predecessors.
        let genesis = SignedOperation.sign(.addUser(key: admin.userNKey, exchangeKey: Base64.encode(admin.keyExchange.publicKey.bytes),
                                                    handle: handle, role: .admin), by: admin, parents: [])
        do {
            try store.append(genesis)
        } catch {
            throw CLIFailure("\(error)")
        }
        print("initialised \(dataDir)")
        print("admin: \(admin.userNKey) (\(handle))\(created ? ", identity created at \(adminIdentity)" : "")")
    }
}

/// An error printed as `Error: MESSAGE` with exit status 1.
struct CLIFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
