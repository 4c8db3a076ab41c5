import Foundation
import UnibusCrypto

/// The membership log as a causal graph of signed operations and its fold:
/// the one piece of logic every node and every client runs to decide who is
/// in which room. Pure (no storage, no I/O), a value type.
///
/// **Order.** Each operation names, inside the bytes its actor signs, the
/// heads of the log the actor had seen (`parents`). An operation is held
/// only once every predecessor is held, so the graph is always closed
/// under "happened before". The fold visits operations in one total order
/// every holder computes alike: by depth (one more than the deepest
/// predecessor), then by operation id. Depth only grows along the graph's
/// edges, so the order respects causality; and neither input can be chosen
/// by a node that relays an operation (its depth follows from signed
/// parents, its id is the hash of the signed bytes). A node can withhold or
/// delay operations; it cannot move one before what its actor had seen.
///
/// **A revoked key stops at its revocation.** Once an accepted `revokeUser`
/// of key K is in the log, every operation signed by K that is not in the
/// causal past of that revocation is refused, unless it follows (causally)
/// a reinstatement of K that itself follows the revocation. This holds even
/// when such an operation sorts before the revocation, which a stolen key
/// could arrange by naming old heads.
///
/// **Checkpoints.** A `.checkpoint` operation signed by the root carries the
/// folded state at its predecessors. A log adopts a newer checkpoint as its
/// base: it checks it against its own fold when it holds the checkpoint's
/// past, trusts the root's signature (following the chain of root
/// hand-overs from the pinned root) when it does not, then drops everything
/// before it. Operations concurrent with a checkpoint are dropped too:
/// after a checkpoint, every operation must descend from it.
public struct MembershipLog: Sendable {
    struct Entry: Sendable {
        let operation: SignedOperation
        let depth: Int
    }

    /// The root admin the log was pinned to (its first operation's actor),
    /// or nil until a first operation teaches it (a node's own bootstrap).
    public private(set) var pinnedRoot: String?
    private var entries: [String: Entry] = [:]
    /// Held operation ids in fold order: (depth, id).
    private var order: [String] = []
    private var headSet: Set<String> = []
    /// The checkpoint the fold starts from, if any (held at depth 0).
    public private(set) var base: SignedOperation?
    public private(set) var baseSequence = 0
    private var baseState: MembershipState
    public private(set) var state: MembershipState
    /// Operations the rules refuse at their place in the order, by id.
    public private(set) var refused: [String: MembershipError] = [:]
    private var operationsByActor: [String: [String]] = [:]
    /// From the last fold: accepted revocations and reinstatements, by user.
    private var revocations: [String: [String]] = [:]
    private var reinstatements: [String: [String]] = [:]

    public init(pinnedRoot: String?) {
        self.pinnedRoot = pinnedRoot
        baseState = MembershipState(root: pinnedRoot)
        state = baseState
    }

    // MARK: reading

    /// Operations held (the base checkpoint included).
    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }
    /// The operations no held operation names as a predecessor, sorted:
    /// what a signer names as `parents`.
    public var heads: [String] { headSet.sorted() }
    public func contains(_ id: String) -> Bool { entries[id] != nil }
    public func operation(_ id: String) -> SignedOperation? { entries[id]?.operation }

    /// SHA-256 (hex) of the base and the heads: two logs hold the same
    /// operations exactly when their digests match (every held operation's
    /// past is held, so the heads name the whole set).
    public var digest: String {
        let text = "base \(base?.id ?? "-")\n" + heads.joined(separator: "\n")
        return Hex.encode(Digest.sha256(Array(text.utf8)))
    }

    /// Every held operation in fold order, the base checkpoint first.
    public var orderedOperations: [SignedOperation] { order.compactMap { entries[$0]?.operation } }

    /// Operations not in the causal past of `known` (ids the caller holds),
    /// in fold order, at most `limit`. When none of `known` is held here,
    /// everything (base first). `complete` is false when more follow.
    public func operations(after known: [String], limit: Int) -> (operations: [SignedOperation], complete: Bool) {
        let held = known.filter { entries[$0] != nil }
        let past = held.isEmpty ? [] : ancestorsOrSelf(of: held)
        var result: [SignedOperation] = []
        for id in order where !past.contains(id) {
            guard result.count < limit else { return (result, false) }
            if let entry = entries[id] { result.append(entry.operation) }
        }
        return (result, true)
    }

    // MARK: inserting

    /// What inserting an operation did.
    public enum InsertOutcome: Equatable, Sendable {
        /// Already held: nothing changed.
        case known
        /// Not held: these predecessors are missing (the caller may keep it
        /// until they arrive).
        case waiting(missing: [String])
        /// Held; `refused` is set when the rules refuse it at its place in
        /// the order (then it changes nothing, on every holder alike).
        case inserted(refused: MembershipError?)
        /// A checkpoint became the base; `replaced` operations before it (or
        /// concurrent with it) were dropped.
        case adopted(replaced: Int)
    }

    /// Inserts a verified operation. Throws (and holds nothing) for an
    /// operation no log may hold: a legacy one, a second start, a bad
    /// checkpoint. See the type's documentation for the rules.
    public mutating func insert(_ operation: SignedOperation) throws(MembershipError) -> InsertOutcome {
        if entries[operation.id] != nil { return .known }
        guard !operation.isLegacy else {
            throw .invalid("a version 1 operation (from before causal order); migrate the data directory with `unibusd migrate`")
        }
        if case .checkpoint(let content) = operation.envelope.operation {
            return try adopt(operation, content)
        }
        let parents = operation.parents
        if parents.isEmpty {
            guard entries.isEmpty else { throw .invalid("only the first operation of a log may name no predecessors") }
            // A first operation is held only if it starts the log (a route
            // peer cannot park a refused "genesis" that blocks the real one).
            var probe = baseState
            try probe.apply(operation)
        }
        let missing = parents.filter { entries[$0] == nil }
        guard missing.isEmpty else { return .waiting(missing: missing) }
        var depth = 0
        for parent in parents {
            let (next, overflow) = (entries[parent]?.depth ?? 0).addingReportingOverflow(1)
            guard !overflow else { throw .invalid("log depth overflow") }
            depth = max(depth, next)
        }
        let index = insertionIndex(depth: depth, id: operation.id)
        let atTail = index == order.endIndex
        order.insert(operation.id, at: index)
        entries[operation.id] = Entry(operation: operation, depth: depth)
        headSet.subtract(parents)
        headSet.insert(operation.id)
        operationsByActor[operation.actor, default: []].append(operation.id)
        if pinnedRoot == nil, parents.isEmpty, case .addUser(let key, _, _, _) = operation.envelope.operation {
            pinnedRoot = key
        }
        if atTail, canFoldIncrementally(operation) {
            do { try state.apply(operation) } catch { refused[operation.id] = error }
        } else {
            refold()
        }
        return .inserted(refused: refused[operation.id])
    }

    /// An operation at the end of the order folds on top of the current
    /// state unless it could change how earlier operations fold: a
    /// revocation (the revoked key's concurrent operations are refused), a
    /// reinstatement, or an operation by a key with a revocation on record.
    private func canFoldIncrementally(_ operation: SignedOperation) -> Bool {
        if revocations[operation.actor] != nil { return false }
        switch operation.envelope.operation {
        case .revokeUser: return false
        case .addUser(let key, _, _, _): return state.users[key]?.status != .revoked
        default: return true
        }
    }

    private func insertionIndex(depth: Int, id: String) -> Int {
        var low = 0, high = order.count
        while low < high {
            let middle = (low + high) / 2
            let other = order[middle]
            let otherDepth = entries[other]?.depth ?? 0
            if otherDepth < depth || (otherDepth == depth && other < id) { low = middle + 1 } else { high = middle }
        }
        return low
    }

    // MARK: folding

    /// Folds every held operation from the base, then refuses the
    /// operations of revoked keys outside their revocation's past, and
    /// folds again without them until nothing more is refused. Each pass
    /// only adds to the excluded set, so it ends (bounded anyway).
    private mutating func refold() {
        let result = Self.fold(order: order, entries: entries, operationsByActor: operationsByActor, from: baseState, skipping: base?.id)
        state = result.state
        refused = result.refused
        revocations = result.revocations
        reinstatements = result.reinstatements
    }

    struct FoldResult {
        var state: MembershipState
        var refused: [String: MembershipError]
        var revocations: [String: [String]]
        var reinstatements: [String: [String]]
    }

    private static func fold(order: [String], entries: [String: Entry], operationsByActor: [String: [String]],
                             from start: MembershipState, skipping baseID: String?) -> FoldResult {
        var excluded: Set<String> = []
        var result = FoldResult(state: start, refused: [:], revocations: [:], reinstatements: [:])
        for _ in 0..<64 {
            result = FoldResult(state: start, refused: [:], revocations: [:], reinstatements: [:])
            for id in order where id != baseID {
                guard let operation = entries[id]?.operation else { continue }
                if excluded.contains(id) {
                    result.refused[id] = .unauthorized("signed by \(operation.actor) outside the causal past of its revocation")
                    continue
                }
                var reinstating: String?
                if case .addUser(let key, _, _, _) = operation.envelope.operation, result.state.users[key]?.status == .revoked {
                    reinstating = key
                }
                do {
                    try result.state.apply(operation)
                    if case .revokeUser(let key) = operation.envelope.operation { result.revocations[key, default: []].append(id) }
                    if let reinstating { result.reinstatements[reinstating, default: []].append(id) }
                } catch {
                    result.refused[id] = error
                }
            }
            var cut: Set<String> = []
            for (key, revoked) in result.revocations {
                for id in operationsByActor[key] ?? [] where !excluded.contains(id) {
                    let outside = revoked.contains { revocation in
                        !isAncestorOrSelf(id, of: revocation, in: entries)
                            && !(result.reinstatements[key] ?? []).contains { reinstatement in
                                isAncestorOrSelf(revocation, of: reinstatement, in: entries)
                                    && isAncestorOrSelf(reinstatement, of: id, in: entries)
                            }
                    }
                    if outside { cut.insert(id) }
                }
            }
            if cut.isEmpty { break }
            excluded.formUnion(cut)
        }
        return result
    }

    /// Whether `ancestor` is `descendant` or in its causal past.
    static func isAncestorOrSelf(_ ancestor: String, of descendant: String, in entries: [String: Entry]) -> Bool {
        if ancestor == descendant { return true }
        guard let target = entries[ancestor]?.depth, let start = entries[descendant], start.depth > target else { return false }
        var stack = start.operation.parents
        var seen: Set<String> = []
        while let id = stack.popLast() {
            if id == ancestor { return true }
            guard seen.insert(id).inserted, let entry = entries[id], entry.depth > target else { continue }
            stack.append(contentsOf: entry.operation.parents)
        }
        return false
    }

    /// `ids` and everything in their causal past (held operations only).
    func ancestorsOrSelf(of ids: [String]) -> Set<String> {
        var seen: Set<String> = []
        var stack = ids
        while let id = stack.popLast() {
            guard seen.insert(id).inserted, let entry = entries[id] else { continue }
            stack.append(contentsOf: entry.operation.parents)
        }
        return seen.filter { entries[$0] != nil }
    }

    // MARK: checkpoints

    private mutating func adopt(_ operation: SignedOperation, _ content: CheckpointState) throws(MembershipError) -> InsertOutcome {
        guard content.sequence > baseSequence else {
            throw .conflict("checkpoint \(content.sequence) is not newer than this log's checkpoint \(baseSequence)")
        }
        guard let pinned = pinnedRoot ?? state.root else {
            throw .unauthorized("this log has no pinned root admin to check a checkpoint against")
        }
        let signer = try content.verifiedRoot(from: pinned)
        guard operation.actor == signer, content.root == signer else {
            throw .unauthorized("a checkpoint must be signed by the root admin it names, reached from the pinned root")
        }
        let adopted = try MembershipState(checkpoint: content)
        let parents = operation.parents
        let holdsPast = !parents.isEmpty && parents.allSatisfy { entries[$0] != nil }
        if holdsPast {
            // This log can check the checkpoint against its own fold of the
            // checkpoint's past: a root that signs a state the log does not
            // lead to is refused here, not trusted.
            let past = ancestorsOrSelf(of: parents)
            let folded = Self.fold(order: order.filter { past.contains($0) }, entries: entries.filter { past.contains($0.key) },
                                   operationsByActor: operationsByActor.mapValues { $0.filter { past.contains($0) } },
                                   from: baseState, skipping: base?.id).state
            guard folded.root == operation.actor else {
                throw .unauthorized("checkpoint signed by \(operation.actor), who is not the root at its predecessors")
            }
            guard folded.checkpointState(sequence: content.sequence, rootChain: content.rootChain) == content else {
                throw .invalid("the checkpoint's state is not the fold of the log at its predecessors")
            }
        }
        let replaced = entries.count
        entries = [operation.id: Entry(operation: operation, depth: 0)]
        order = [operation.id]
        headSet = [operation.id]
        base = operation
        baseSequence = content.sequence
        if pinnedRoot == nil { pinnedRoot = pinned }
        baseState = adopted
        state = adopted
        refused = [:]
        operationsByActor = [:]
        revocations = [:]
        reinstatements = [:]
        return .adopted(replaced: replaced)
    }

    /// The chain of root hand-overs a new checkpoint must carry: the base's
    /// chain followed by every accepted `rotateRoot` since, in fold order.
    public var rootChain: [ChainLink] {
        var chain: [ChainLink] = []
        if case .checkpoint(let content)? = base?.envelope.operation { chain = content.rootChain }
        for id in order where refused[id] == nil && id != base?.id {
            if let operation = entries[id]?.operation, case .rotateRoot = operation.envelope.operation {
                chain.append(ChainLink(operation))
            }
        }
        return chain
    }
}
