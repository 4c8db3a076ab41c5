import Foundation
import UnibusCrypto

/// The folded membership state at a checkpoint's predecessors, signed by the
/// root admin inside a `.checkpoint` operation. Nodes and clients start from
/// the newest checkpoint they hold instead of the log before it, and nodes
/// prune that log (see `MembershipLog.insert`).
public struct CheckpointState: Codable, Equatable, Sendable {
    /// Grows by one per checkpoint; a checkpoint not above the one a log
    /// holds is stale and refused.
    public var sequence: Int
    /// The root admin at the checkpoint, who signs it.
    public var root: String
    public var settings: ClusterSettings
    public var users: [User]
    public var rooms: [Room]
    public var members: [Member]
    /// The `rotateRoot` operations from the log's first root to `root`, so a
    /// reader that pinned the first root can follow the hand-overs without
    /// the log they were in.
    public var rootChain: [ChainLink]
    /// Login roles, workload logins and used token ids (absent when none,
    /// so checkpoints from before login roles keep their bytes).
    public var loginRoles: [LoginRole]?
    public var workloads: [Workload]?
    public var usedTokens: [UsedToken]?
    /// Unix seconds the expired workloads were pruned at (at most the
    /// checkpoint's own signed time); absent when nothing was pruned.
    public var prunedAt: Int64?

    public init(sequence: Int, root: String, settings: ClusterSettings, users: [User], rooms: [Room], members: [Member],
                rootChain: [ChainLink], loginRoles: [LoginRole]? = nil, workloads: [Workload]? = nil, usedTokens: [UsedToken]? = nil,
                prunedAt: Int64? = nil) {
        self.loginRoles = loginRoles
        self.workloads = workloads
        self.usedTokens = usedTokens
        self.prunedAt = prunedAt
        self.sequence = sequence
        self.root = root
        self.settings = settings
        self.users = users
        self.rooms = rooms
        self.members = members
        self.rootChain = rootChain
    }

    /// Most root hand-overs a chain may list.
    public static let maximumChain = 1000

    /// Follows `rootChain` from `pinnedRoot` and returns the root it ends at;
    /// each link must be a `rotateRoot` signed by the root before it.
    public func verifiedRoot(from pinnedRoot: String) throws(MembershipError) -> String {
        guard rootChain.count <= Self.maximumChain else { throw .invalid("a checkpoint's root chain has over \(Self.maximumChain) links") }
        var current = pinnedRoot
        for link in rootChain {
            let operation = try link.operation()
            guard operation.actor == current, case .rotateRoot(let next) = operation.envelope.operation else {
                throw .unauthorized("a checkpoint's root chain does not lead from the pinned root \(pinnedRoot)")
            }
            current = next
        }
        return current
    }
}

/// One signed operation carried inside another document (base64 fields).
public struct ChainLink: Codable, Equatable, Sendable {
    public var bytes: String
    public var signature: String

    public init(_ operation: SignedOperation) {
        bytes = Base64.encode(operation.bytes)
        signature = Base64.encode(operation.signature)
    }

    /// The operation, signature verified.
    public func operation() throws(MembershipError) -> SignedOperation {
        guard let bytes = try? Base64.decode(bytes), let signature = try? Base64.decode(signature) else {
            throw .invalid("a chained operation is not base64")
        }
        return try SignedOperation(bytes: bytes, signature: signature)
    }
}
