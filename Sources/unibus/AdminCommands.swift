import ArgumentParser
import Foundation
import UnibusControlClient
import UnibusCrypto
import UnibusMembership

/// Options every command that talks to a running node takes.
struct NodeOptions: ParsableArguments {
    @Option(name: .long, help: "The node's control plane: https://HOST:PORT (or http://127.0.0.1:PORT in dev mode). Default: the context's first node.")
    var node = CLIContext.current?.nodes.first ?? "http://127.0.0.1:4280"

    @Option(name: .long, help: "Your identity file (loaded, never created). Default: the context's.")
    var identity: String = CLIContext.current?.identity ?? ""

    @Option(name: .long, help: "The CA certificate that issued the node's certificate (required for https). Default: the context's.")
    var ca: String? = CLIContext.current?.ca

    @Option(name: .long, help: "A client certificate (PEM) for nodes that require one, with --key.")
    var cert: String?

    @Option(name: .long, help: "The private key of --cert.")
    var key: String?

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func validate() throws {
        try CLIContext.check()
        guard !identity.isEmpty else { throw ValidationError("give --identity FILE, or add a context with one (`unibus context add NAME --identity FILE --use`)") }
    }
}

/// A connection to a node: its id (for signing) and the caller's identity.
struct NodeSession {
    let session: ControlSession

    static func open(_ options: NodeOptions) async throws -> NodeSession {
        let identity = try loadIdentity(options.identity)
        do {
            let certificate: ClientCertificate?
            switch (options.cert, options.key) {
            case let (cert?, key?): certificate = ClientCertificate(certificatePath: cert, keyPath: key)
            case (nil, nil): certificate = nil
            default: throw CLIError("--cert and --key go together")
            }
            return NodeSession(session: try await ControlSession.open(url: options.node, caPath: options.ca, identity: identity,
                                                                      clientCertificate: certificate))
        } catch {
            throw CLIError("\(error)")
        }
    }

    /// A signed GET whose answer is the typed message `T`.
    func get<T: Decodable>(_ path: String, as type: T.Type) async throws -> T {
        do { return try await session.call("GET", path, expecting: type) } catch { throw CLIError("\(error)") }
    }

    /// Signs `operation` as the caller (naming the node's heads) and submits it.
    func submit(_ operation: MembershipOperation) async throws -> ControlAPI.OperationAccepted {
        do { return try await session.submit(operation) } catch { throw CLIError("\(error)") }
    }

    /// Submits an operation already signed.
    func submit(_ signed: SignedOperation) async throws -> ControlAPI.OperationAccepted {
        do { return try await session.submit(signed) } catch { throw CLIError("\(error)") }
    }

    /// The node's whole log, verified and folded here from `root`.
    func verifiedLog(root: String) async throws -> MembershipLog {
        do { return try await session.verifiedLog(root: root) } catch { throw CLIError("\(error)") }
    }
}

func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// The public keys in FILE: `unibus identity show --json` output (public
/// only), or an identity file, of which only the public halves are used.
func publicKeys(from path: String) throws -> (signing: String, exchange: String) {
    struct Shown: Decodable {
        let nkey: String
        let exchange_key: String
    }
    if let data = FileManager.default.contents(atPath: path), data.count <= 64 * 1024,
       let shown = try? JSONDecoder().decode(Shown.self, from: data) {
        return (shown.nkey, shown.exchange_key)
    }
    let identity = try loadIdentity(path)
    return (identity.userNKey, Base64.encode(identity.keyExchange.publicKey.bytes))
}

/// A signing key given as a user nkey or 64 hex digits, in canonical nkey form.
func canonicalUserKey(_ text: String, option: String = "--sign-pub") throws -> String {
    if let (_, key) = try? NKey.decodePublicKey(text, expecting: .user) { return NKey.encodePublicKey(key, type: .user) }
    if let bytes = try? Hex.decode(text), let key = Ed25519PublicKey(bytes: bytes) { return NKey.encodePublicKey(key, type: .user) }
    // Never echo what was given: it may be a secret pasted by mistake.
    if text.hasPrefix("S") {
        throw CLIError("\(option) looks like a seed (a secret key, S…): pass the public key (U…) from `unibus identity show`, "
                       + "and treat that seed as exposed if it was shared")
    }
    throw CLIError("\(option) is neither a user nkey (U…) nor 64 hex digits of an Ed25519 public key")
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "user", abstract: "Add, list and revoke users on a running node.",
                                                    subcommands: [Add.self, List.self, Revoke.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a user (admins only), or reinstate a revoked one. Re-adding an active user is an error and changes nothing.",
            discussion: "Give the public keys with --sign-pub and --exchange-key, or --from-identity FILE: the output of "
                + "`unibus identity show --json` saved to a file, or an identity file (only its public halves are used).")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The user's public signing key (U… nkey or hex).") var signPub: String?
        @Option(name: .long, help: "The user's exchange key (X25519, base64), which room keys are sealed to.") var exchangeKey: String?
        @Option(name: .long, help: "Take both public keys from FILE (`unibus identity show --json` output, or an identity file).")
        var fromIdentity: String?
        @Option(name: .long, help: "A short name.") var handle: String
        @Option(name: .long, help: "admin, member, or agent (a VaultMesh node agent's key: it signs heartbeats to the control plane and is not a bus user).") var role = "member"

        func run() async throws {
            guard let role = UserRole(rawValue: role) else { throw ValidationError("--role is admin, member or agent") }
            let (signing, exchange): (String, String)
            switch (fromIdentity, signPub, exchangeKey) {
            case let (path?, nil, nil): (signing, exchange) = try publicKeys(from: path)
            case let (nil, sign?, kx?): (signing, exchange) = (sign, kx)
            default: throw ValidationError("give --sign-pub and --exchange-key, or --from-identity FILE")
            }
            let session = try await NodeSession.open(options)
            let key = try canonicalUserKey(signing)
            let result = try await session.submit(.addUser(key: key, exchangeKey: exchange, handle: handle, role: role))
            if options.json { try printJSON(result) } else { print("added \(handle) (\(key)) as \(role.rawValue)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List users.")
        @OptionGroup var options: NodeOptions

        func run() async throws {
            let result = try await NodeSession.open(options).get("/v1/users", as: ControlAPI.UsersResponse.self)
            if options.json { try printJSON(result); return }
            for user in result.users { print("\(user.handle)\t\(user.role)\t\(user.status)\t\(user.key)") }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a user: its connections close at once, new ones are refused.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The user's public signing key (U… nkey or hex).") var signPub: String

        func run() async throws {
            let session = try await NodeSession.open(options)
            let key = try canonicalUserKey(signPub)
            let result = try await session.submit(.revokeUser(key: key))
            if options.json { try printJSON(result) } else { print("revoked \(key)") }
        }
    }
}

struct RoomCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "room", abstract: "Create rooms and manage their members on a running node.",
                                                    subcommands: [Create.self, List.self, Show.self, Policy.self, Archive.self, Members.self, AddMember.self, RemoveMember.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one room: subject, owner, policy, state.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The room's id (as given to `unibus room create --id`).") var id: String

        func run() async throws {
            let rooms = try await NodeSession.open(options).get("/v1/rooms", as: ControlAPI.RoomsResponse.self).rooms
            guard let room = rooms.first(where: { $0.id == id }) else { throw CLIError("no room \(id)") }
            if options.json { try printJSON(room); return }
            print("id: \(room.id)\nsubject: \(room.subject)\nowner: \(room.owner)\ncreated: \(room.created)")
            if let archived = room.archived { print("archived: \(archived)") }
            let policy = room.policy
            print("policy.compress: \(policy.compress)\npolicy.encrypt: \(policy.encrypt)\npolicy.frame_window_seconds: \(policy.frameWindowSeconds)")
            print("policy.rotate_after_messages: \(policy.rotateAfterMessages)\npolicy.rotate_after_seconds: \(policy.rotateAfterSeconds)")
            print("policy.sign: \(policy.sign)")
            print("policy.persist: \(policy.persist ?? false)")
            if policy.persist == true {
                print("policy.retain_age_seconds: \(policy.retainAgeSeconds ?? 0)\npolicy.retain_bytes: \(policy.retainBytes ?? 0)")
                print("policy.retain_messages: \(policy.retainMessages ?? 0)\npolicy.history: \(policy.history ?? "-")")
            }
        }
    }

    /// Options of persisted rooms, shared by `create` and `policy`.
    struct PersistenceOptions: ParsableArguments {
        @Option(name: .long, help: "Keep frames this long (e.g. 3600, 90m, 12h, 7d, 2w; default 7d).") var retainAge: String?
        @Option(name: .long, help: "Keep at most this many bytes of frames per node (e.g. 500MiB, 1GiB; default 1GiB).") var retainBytes: String?
        @Option(name: .long, help: "Keep at most this many frames (default 1000000).") var retainMessages: Int?
        @Option(name: .long, help: "What new members may read: joined (from their join on; default) or shared (everything retained).")
        var history: HistoryVisibility?

        func apply(to policy: inout RoomPolicy) throws {
            if let retainAge { policy.retainAgeSeconds = try parseDuration(retainAge, option: "--retain-age") }
            if let retainBytes { policy.retainBytes = try parseSize(retainBytes, option: "--retain-bytes") }
            if let retainMessages { policy.retainMessages = retainMessages }
            if let history { policy.history = history }
        }

        var isEmpty: Bool { retainAge == nil && retainBytes == nil && retainMessages == nil && history == nil }
    }

    struct Policy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a room's policy (owner or admin): persistence, retention, history, rotation. A signed operation like any other.",
            discussion: "Encryption and signing cannot change (create a new room instead). Turning --no-persist on a persisted room makes every node delete its frames.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The room's id.") var id: String
        @Flag(name: .long, inversion: .prefixedNo, help: "Durable, replicated history with acknowledged publishes.") var persist: Bool?
        @OptionGroup var persistence: PersistenceOptions
        @Option(name: .long, help: "Rotate the sender's session after this many messages.") var rotateMessages: Int?
        @Option(name: .long, help: "Rotate the sender's session after this many seconds.") var rotateSeconds: Int?

        func run() async throws {
            let session = try await NodeSession.open(options)
            let rooms = try await session.get("/v1/rooms", as: ControlAPI.RoomsResponse.self).rooms
            guard let room = rooms.first(where: { $0.id == id }) else { throw CLIError("no room \(id)") }
            let view = room.policy
            var policy = RoomPolicy(encrypt: view.encrypt, sign: view.sign, compress: view.compress, persist: view.persist ?? false,
                                    rotateAfterMessages: view.rotateAfterMessages, rotateAfterSeconds: view.rotateAfterSeconds,
                                    frameWindowSeconds: view.frameWindowSeconds,
                                    retainAgeSeconds: view.retainAgeSeconds ?? RoomPolicy.defaultRetainAgeSeconds,
                                    retainBytes: view.retainBytes ?? RoomPolicy.defaultRetainBytes,
                                    retainMessages: view.retainMessages ?? RoomPolicy.defaultRetainMessages,
                                    history: view.history.flatMap(HistoryVisibility.init(rawValue:)) ?? .joined)
            if let persist { policy.persist = persist }
            try persistence.apply(to: &policy)
            if let rotateMessages { policy.rotateAfterMessages = rotateMessages }
            if let rotateSeconds { policy.rotateAfterSeconds = rotateSeconds }
            if !policy.persist && !persistence.isEmpty { throw CLIError("retention and history apply to persisted rooms: add --persist") }
            if let problem = policy.problem { throw CLIError(problem) }
            let result = try await session.submit(.setRoomPolicy(room: id, policy: policy))
            if options.json { try printJSON(result) } else { print("changed the policy of room \(id)") }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a room; you become its owner.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "Room id ([A-Za-z0-9_-], up to 64).") var id: String
        @Option(name: .long, help: "The room's subject (literal, e.g. rooms.ops).") var subject: String
        @Flag(name: .long, inversion: .prefixedNo, help: "End-to-end encrypt (Megolm).") var encrypt = true
        @Flag(name: .long, help: "Compress plaintext with zstd before encryption (leaks length patterns).") var compress = false
        @Flag(name: .long, help: "Durable, replicated history: every node stores the room's ciphertext and publishes are acknowledged once stored.")
        var persist = false
        @OptionGroup var persistence: PersistenceOptions
        @Option(name: .long, help: "Rotate the sender's session after this many messages.") var rotateMessages = 1000
        @Option(name: .long, help: "Rotate the sender's session after this many seconds.") var rotateSeconds = 7 * 24 * 3600

        func run() async throws {
            if !persist && !persistence.isEmpty { throw CLIError("retention and history apply to persisted rooms: add --persist") }
            let session = try await NodeSession.open(options)
            var policy = RoomPolicy(encrypt: encrypt, sign: true, compress: compress, persist: persist,
                                    rotateAfterMessages: rotateMessages, rotateAfterSeconds: rotateSeconds)
            try persistence.apply(to: &policy)
            if let problem = policy.problem { throw CLIError(problem) }
            let result = try await session.submit(.createRoom(id: id, subject: subject, policy: policy))
            if options.json { try printJSON(result) } else { print("created room \(id) on \(subject)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List rooms.")
        @OptionGroup var options: NodeOptions

        func run() async throws {
            let result = try await NodeSession.open(options).get("/v1/rooms", as: ControlAPI.RoomsResponse.self)
            if options.json { try printJSON(result); return }
            for room in result.rooms { print("\(room.id)\t\(room.subject)\t\(room.archived == nil ? "open" : "archived")") }
        }
    }

    struct Archive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Archive a room (owner or admin).")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The room's id (as given to `unibus room create --id`).") var id: String

        func run() async throws {
            let result = try await NodeSession.open(options).submit(.archiveRoom(id: id))
            if options.json { try printJSON(result) } else { print("archived room \(id)") }
        }
    }

    struct Members: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a room's members.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The room's id (as given to `unibus room create --id`).") var id: String

        func run() async throws {
            let result = try await NodeSession.open(options).get("/v1/rooms/\(id)/members", as: ControlAPI.MembersResponse.self)
            if options.json { try printJSON(result); return }
            for member in result.members { print("\(member.handle)\t\(member.role)\t\(member.user)") }
        }
    }

    struct AddMember: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add-member", abstract: "Add a member (room owner or admin).")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The room's id (as given to `unibus room create --id`).") var id: String
        @Option(name: .long, help: "The member's public signing key (U… nkey or hex).") var signPub: String
        @Option(name: .long, help: "owner or member.") var role = "member"

        func run() async throws {
            guard let role = RoomRole(rawValue: role) else { throw ValidationError("--role is owner or member") }
            let key = try canonicalUserKey(signPub)
            let result = try await NodeSession.open(options).submit(.addMember(room: id, user: key, role: role))
            if options.json { try printJSON(result) } else { print("added \(key) to \(id) as \(role.rawValue)") }
        }
    }

    struct RemoveMember: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove-member", abstract: "Remove a member (room owner, admin, or the member itself).")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The room's id (as given to `unibus room create --id`).") var id: String
        @Option(name: .long, help: "The member's public signing key (U… nkey or hex).") var signPub: String

        func run() async throws {
            let key = try canonicalUserKey(signPub)
            let result = try await NodeSession.open(options).submit(.removeMember(room: id, user: key))
            if options.json { try printJSON(result) } else { print("removed \(key) from \(id)") }
        }
    }
}

struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster", abstract: "Cluster-wide settings, signed by an admin into the membership log.",
                                                    subcommands: [Settings.self])

    struct Settings: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the cluster-wide settings, or change them (admins only; every node and client folds the same values).")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "true or false: whether rooms without end-to-end encryption may be created (default false).")
        var allowUnencryptedRooms: Bool?
        @Option(name: .long, help: "Open rooms one non-admin user may own (1 to 100000; default 100).")
        var maxRoomsPerUser: Int?

        func run() async throws {
            let session = try await NodeSession.open(options)
            let current = try await session.get("/v1/node", as: ControlAPI.NodeInfo.self).membership.settings
            var settings = ClusterSettings(allowUnencryptedRooms: current.allowUnencryptedRooms, maxRoomsPerUser: current.maxRoomsPerUser)
            guard allowUnencryptedRooms != nil || maxRoomsPerUser != nil else {
                if options.json { try printJSON(current) } else {
                    print("allow_unencrypted_rooms: \(settings.allowUnencryptedRooms)\nmax_rooms_per_user: \(settings.maxRoomsPerUser)")
                }
                return
            }
            if let allowUnencryptedRooms { settings.allowUnencryptedRooms = allowUnencryptedRooms }
            if let maxRoomsPerUser {
                guard ClusterSettings.maxRoomsPerUserRange.contains(maxRoomsPerUser) else {
                    throw ValidationError("--max-rooms-per-user must be 1 to \(ClusterSettings.maxRoomsPerUserRange.upperBound)")
                }
                settings.maxRoomsPerUser = maxRoomsPerUser
            }
            let result = try await session.submit(.setClusterSettings(settings: settings))
            if options.json { try printJSON(result) } else { print("cluster settings changed (operation \(result.id))") }
        }
    }
}

struct RootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "root", abstract: "Hand the root admin role to another admin (the root only).",
                                                    subcommands: [Rotate.self])

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make another active admin the root (signed by the current root, --identity).",
            discussion: "Clients and nodes that pinned an earlier root follow the chain of hand-overs in the log. Add the new "
                + "key as an admin first (`unibus user add --role admin`); revoke the old key afterwards if it is retired. "
                + "If the root key is lost, see docs/cluster.md (\"Losing the root key\").")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The next root admin's public signing key (U… nkey or hex).") var to: String

        func run() async throws {
            let key = try canonicalUserKey(to, option: "--to")
            let result = try await NodeSession.open(options).submit(.rotateRoot(key: key))
            if options.json { try printJSON(result) } else { print("the root admin is now \(key) (operation \(result.id))") }
        }
    }
}

struct LogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "log", abstract: "Inspect and checkpoint the membership log.",
                                                    subcommands: [Show.self, Checkpoint.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch the node's log, verify every operation from the pinned root here, and print the fold's summary.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The cluster's root admin (U… nkey) the log must start from.") var root: String

        func run() async throws {
            let root = try canonicalUserKey(root, option: "--root")
            let log = try await NodeSession.open(options).verifiedLog(root: root)
            let summary = LogSummary(log)
            if options.json { try printJSON(summary); return }
            print("operations: \(summary.operations) (\(summary.refused) refused by the rules)")
            print("checkpoint: \(summary.checkpoint ?? "none") (sequence \(summary.checkpointSequence))")
            print("heads: \(summary.heads.joined(separator: " "))")
            print("root: \(summary.root)\nstate digest: \(summary.stateDigest)\nlog digest: \(summary.logDigest)")
        }
    }

    struct Checkpoint: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a checkpoint of the folded state (the root admin only).",
            discussion: "The log is fetched and verified here from --root, and the state this tool folded (never the node's) is "
                + "signed. Nodes and clients then start from it, and nodes drop the operations before it. Operations "
                + "concurrent with the checkpoint are dropped everywhere: take one when the cluster is quiet, one at a time.")
        @OptionGroup var options: NodeOptions
        @Option(name: .long, help: "The cluster's first root admin (U… nkey), as clients pin it.") var root: String

        func run() async throws {
            let root = try canonicalUserKey(root, option: "--root")
            let identity = try loadIdentity(options.identity)
            let session = try await NodeSession.open(options)
            let log = try await session.verifiedLog(root: root)
            guard log.state.root == identity.userNKey else {
                throw CLIError("only the root admin (\(log.state.root ?? "unknown")) may sign a checkpoint; --identity is \(identity.userNKey)")
            }
            let (sequence, overflow) = log.baseSequence.addingReportingOverflow(1)
            guard !overflow else { throw CLIError("the log's checkpoint sequence is exhausted; start a new cluster log") }
            // Workload logins that ended by now, and token ids no role can
            // accept any more, leave the state (the checkpoint names the time).
            // Whole seconds, and pruning what ended 120 s before: a root
            // clock ahead of the nodes' (as far as they accept) ends nothing early.
            let now = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))
            let prunedAt = Int64(now.timeIntervalSince1970) - Int64(OperationWindow.maximumLead / 1000)
            let content = log.state.checkpointState(sequence: sequence, rootChain: log.rootChain, prunedAt: prunedAt)
            let signed = SignedOperation.sign(.checkpoint(content), by: identity, parents: log.heads, at: now)
            guard signed.bytes.count <= SignedOperation.maximumCheckpointSize else {
                throw CLIError("the state is \(signed.bytes.count) bytes, over the \(SignedOperation.maximumCheckpointSize)-byte checkpoint limit")
            }
            let result = try await session.submit(signed)
            if options.json { try printJSON(result) } else {
                let pruned = log.state.users.count - content.users.count
                print("checkpoint \(content.sequence) signed (operation \(result.id)); \(log.count) operations summarized"
                      + (pruned > 0 ? ", \(pruned) ended workload logins pruned" : ""))
            }
        }
    }
}

/// What `unibus log show` prints.
struct LogSummary: Encodable {
    var operations: Int
    var refused: Int
    var checkpoint: String?
    var checkpointSequence: Int
    var heads: [String]
    var root: String
    var stateDigest: String
    var logDigest: String

    init(_ log: MembershipLog) {
        operations = log.count
        refused = log.refused.count
        checkpoint = log.base?.id
        checkpointSequence = log.baseSequence
        heads = log.heads
        root = log.state.root ?? ""
        stateDigest = log.state.digest
        logDigest = log.digest
    }
}

extension HistoryVisibility: ExpressibleByArgument {}

/// Seconds from `3600`, `90s`, `15m`, `12h`, `7d` or `2w`; the error names the option.
func parseDuration(_ text: String, option: String) throws -> Int {
    try parseScaled(text, option: option, units: [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400), ("w", 604_800)],
                    expected: "a number of seconds or a number with s, m, h, d or w (e.g. 7d)")
}

/// Bytes from `1048576`, `512KiB`, `500MB`, `1GiB`, `2TiB` (KB/MB/GB/TB are powers of 1000).
func parseSize(_ text: String, option: String) throws -> Int {
    try parseScaled(text, option: option,
                    units: [("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("tib", 1 << 40),
                            ("kb", 1000), ("mb", 1_000_000), ("gb", 1_000_000_000), ("tb", 1_000_000_000_000), ("b", 1)],
                    expected: "a number of bytes or a number with KiB, MiB, GiB, TiB, KB, MB, GB or TB (e.g. 1GiB)")
}

/// A non-negative number with an optional unit suffix (case-insensitive),
/// multiplied out with overflow checked; the error names the option.
private func parseScaled(_ text: String, option: String, units: [(String, Int)], expected: String) throws -> Int {
    let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
    var number = trimmed, scale = 1
    if let (suffix, factor) = units.first(where: { trimmed.hasSuffix($0.0) }) {
        number = String(trimmed.dropLast(suffix.count)).trimmingCharacters(in: .whitespaces)
        scale = factor
    }
    guard let value = Int(number), value >= 0 else { throw CLIError("\(option) must be \(expected), not \(text.prefix(40))") }
    let (result, overflow) = value.multipliedReportingOverflow(by: scale)
    guard !overflow else { throw CLIError("\(option) \(text.prefix(40)) is too large") }
    return result
}
