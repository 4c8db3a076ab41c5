import ArgumentParser
import Foundation
import UnibusCrypto
import UnibusMembership
import UnibusMembershipStore

/// `unibusd debug append-forever`: appends membership operations as the
/// admin until killed, printing `acked N` after each durable append. The
/// crash test kills it with SIGKILL mid-stream and checks that the store
/// reopens with every acknowledged operation and a consistent fold.
struct Debug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Diagnostics and test drivers.",
        subcommands: [AppendForever.self])

    struct AppendForever: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "append-forever",
            abstract: "Append user/room operations as the admin until killed (crash testing; use a scratch data directory).")

        @Option(name: .long, help: "A data directory created by `unibusd init`.")
        var dataDir: String

        @Option(name: .long, help: "The admin identity used for `unibusd init`.")
        var adminIdentity: String

        func run() throws {
            let admin: Identity
            let store: MembershipStore
            do {
                admin = try IdentityFile.load(from: adminIdentity)
                store = try MembershipStore(directory: dataDir)
            } catch {
                throw CLIFailure("\(error)")
            }
            var count = store.operationCount
            while true {
                let user = Identity()
                let operations: [MembershipOperation] = [
                    .addUser(key: user.userNKey, exchangeKey: Base64.encode(user.keyExchange.publicKey.bytes), handle: "u\(count)", role: .member),
                    .createRoom(id: "r\(count)", subject: "rooms.r\(count)", policy: RoomPolicy()),
                    .addMember(room: "r\(count)", user: user.userNKey, role: .member),
                ]
                for operation in operations {
                    do {
                        try store.append(store.signed(operation, by: admin))
                    } catch {
                        throw CLIFailure("\(error)")
                    }
                    count += 1
                    print("acked \(count)")
                    fflush(nil)
                }
            }
        }
    }
}
