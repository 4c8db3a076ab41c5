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
        /// Insertion number: every operation in its past has a smaller one.
        let index: Int
    }

    /// A set of held operations as bits over insertion numbers. An
    /// operation's past never changes once it is held, so these are cached.
    struct PastSet: Sendable {
        var bits: [UInt64] = []
        func contains(_ index: Int) -> Bool {
            let word = index >> 6
            return word < bits.count && bits[word] & (1 << UInt64(index & 63)) != 0
        }
        mutating func insert(_ index: Int) {
            let word = index >> 6
            if word >= bits.count { bits += [UInt64](repeating: 0, count: word - bits.count + 1) }
            bits[word] |= 1 << UInt64(index & 63)
        }
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
    /// Keys whose operations the graph can cut: targets of any held
    /// revocation, and signers of any held root hand-over. An operation by
    /// one of them never folds incrementally.
    private var keysWithHistory: Set<String> = []
    /// Keys that are or were root: the base's root and every hand-over's
    /// target. Only their hand-overs can shape the graph's cuts.
    private var rootCapable: Set<String> = []
    /// The base's root, and every held hand-over (signer, target): the
    /// root-capable keys are their closure, whatever the arrival order.
    private var baseRootKey: String?
    private var rotations: [(signer: String, target: String)] = []
    /// Successors that have acted on every hand-over to them (as of the
    /// last fold): their later operations change no hand-over's fate.
    private var settledTargets: Set<String> = []
    private var nextIndex = 0
    /// Cached pasts (revocations, hand-overs), and whether each hand-over
    /// is valid in its own past (the fold of its past accepts it).
    private var pasts: [String: PastSet] = [:]
    private var handOverValidity: [String: Bool] = [:]
    /// From the last fold: standing revocations and reinstatements, by user.
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
    public func operations(after known: [String], limit: Int, maxBytes: Int = .max) -> (operations: [SignedOperation], complete: Bool) {
        let held = known.filter { entries[$0] != nil }
        let past = held.isEmpty ? [] : ancestorsOrSelf(of: held)
        var result: [SignedOperation] = []
        var bytes = 0
        for id in order where !past.contains(id) {
            guard let entry = entries[id] else { continue }
            // Always at least one, so a page makes progress.
            guard result.count < limit, result.isEmpty || bytes + entry.operation.bytes.count <= maxBytes else { return (result, false) }
            bytes += entry.operation.bytes.count
            result.append(entry.operation)
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
        entries[operation.id] = Entry(operation: operation, depth: depth, index: nextIndex)
        nextIndex += 1
        headSet.subtract(parents)
        headSet.insert(operation.id)
        operationsByActor[operation.actor, default: []].append(operation.id)
        if pinnedRoot == nil, parents.isEmpty, case .addUser(let key, _, _, _) = operation.envelope.operation {
            pinnedRoot = key
        }
        if parents.isEmpty, let root = pinnedRoot {
            baseRootKey = root
            updateRootCapable()
        }
        switch operation.envelope.operation {
        case .revokeUser(let key): keysWithHistory.insert(key)
        case .rotateRoot(let key):
            rotations.append((operation.actor, key))
            updateRootCapable()
        default: break
        }
        if let cut = certainlyCut(operation) {
            // Signed by a revoked key outside its revocation's past: it can
            // change nothing, so nothing is refolded (a flood of these costs
            // one ancestry walk each, not a fold of the log each).
            refused[operation.id] = cut
        } else if atTail, canFoldIncrementally(operation) {
            do { try state.apply(operation) } catch { refused[operation.id] = error }
        } else {
            refold()
        }
        return .inserted(refused: refused[operation.id])
    }

    /// An operation at the end of the order folds on top of the current
    /// state unless it could change how other operations fold: a
    /// revocation, a root hand-over, an admin's creation or a reinstatement,
    /// or any operation by a key the graph can cut.
    private func canFoldIncrementally(_ operation: SignedOperation) -> Bool {
        if keysWithHistory.contains(operation.actor) { return false }
        switch operation.envelope.operation {
        case .rotateRoot: return !rootCapable.contains(operation.actor)   // otherwise refused by the rules, changing nothing
        case .revokeUser, .checkpoint: return false
        case .addUser(let key, _, _, let role): return role != .admin && state.users[key]?.status != .revoked
        default: return true
        }
    }

    /// The refusal of a new operation that the last fold's standing
    /// revocations already cut: its actor is revoked by a revocation it does
    /// not precede, and it follows no reinstatement after that revocation.
    /// Such an operation changes no other operation's fate (revocations of
    /// admins are the root's, and the root is never revoked), so the fold
    /// stays as it is.
    private func certainlyCut(_ operation: SignedOperation) -> MembershipError? {
        // Anything a key that is or was root signs (hand-overs included) can
        // change other operations' fates through the hand-over rule: those
        // always refold. A hand-over by any other key is refused by the rules.
        guard !rootCapable.contains(operation.actor) else { return nil }
        guard let standing = revocations[operation.actor], !standing.isEmpty else { return nil }
        let reinstated = (reinstatements[operation.actor] ?? []).contains { Self.isAncestorOrSelf($0, of: operation.id, in: entries) }
        guard !reinstated else { return nil }
        return .unauthorized("signed by \(operation.actor) outside the causal past of its revocation")
    }

    /// Keys any held revocation targets.
    private var revokedKeys: Set<String> {
        var keys: Set<String> = []
        for ids in operationsByActor.values {
            for id in ids { if case .revokeUser(let key)? = entries[id]?.operation.envelope.operation { keys.insert(key) } }
        }
        return keys
    }

    /// Recomputes the root-capable keys (the base root, and the targets of
    /// hand-overs signed by root-capable keys, transitively), and marks
    /// their operations as never folding incrementally (a successor's first
    /// act settles a hand-over, which changes the graph's cuts).
    private mutating func updateRootCapable() {
        var capable: Set<String> = baseRootKey.map { [$0] } ?? []
        var grew = true
        while grew {
            grew = false
            for rotation in rotations where capable.contains(rotation.signer) && !capable.contains(rotation.target) {
                capable.insert(rotation.target)
                grew = true
            }
        }
        rootCapable = capable
        // A key that handed the root over has its root operations cut
        // around its hand-over; a successor's first act settles one.
        for rotation in rotations where capable.contains(rotation.signer) {
            keysWithHistory.insert(rotation.signer)
            if !settledTargets.contains(rotation.target) { keysWithHistory.insert(rotation.target) }
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

    /// Folds every held operation from the base, with the graph's cuts:
    ///
    /// - **A hand-over ends the old root's root powers.** For each root
    ///   hand-over T signed by key K, K's operations that could need the root
    ///   (hand-overs, checkpoints, adding or revoking users) and are
    ///   concurrent with T (neither in its past nor after it) are refused: an
    ///   old root key cannot sign "before" its hand-over. Two concurrent
    ///   hand-overs by one key refuse each other (the root is then frozen:
    ///   fail closed).
    /// - **A revoked key stops at its revocation.** For each revocation that
    ///   stands (passes the rules at its place) of key K, K's operations
    ///   outside its causal past are refused, unless they follow a standing
    ///   reinstatement of K that follows the revocation.
    ///
    /// The cuts are computed afresh from each pass's standing revocations
    /// until they no longer change. Only the root revokes admins and the
    /// root is never revoked, so a cut can never take away the revocation
    /// that caused another: this settles in at most three passes (bounded
    /// at eight).
    private mutating func refold() {
        var caches = Caches(pasts: pasts, validity: handOverValidity)
        let result = Self.fold(order: order, entries: entries, operationsByActor: operationsByActor, from: baseState, skipping: base?.id,
                               rootCapable: rootCapable, caches: &caches)
        pasts = caches.pasts
        handOverValidity = caches.validity
        // Successors that acted on every counted hand-over to them fold incrementally from now on.
        let targetsByHandOver: [(String, String)] = rotations.isEmpty ? [] : order.compactMap { id in
            guard let operation = entries[id]?.operation, case .rotateRoot(let target) = operation.envelope.operation,
                  rootCapable.contains(operation.actor), handOverValidity[id] == true else { return nil }
            return (id, target)
        }
        settledTargets = Set(targetsByHandOver.map(\.1)).filter { target in
            targetsByHandOver.allSatisfy { $0.1 != target || caches.acted.contains($0.0) }
        }
        keysWithHistory.subtract(settledTargets.subtracting(rotations.filter { rootCapable.contains($0.signer) }.map(\.signer))
                                    .subtracting(revokedKeys))
        state = result.state
        refused = result.refused
        revocations = result.revocations
        reinstatements = result.reinstatements
    }

    struct Caches {
        var pasts: [String: PastSet]
        var validity: [String: Bool]
        /// Hand-overs whose successor acted (from the last `handOverCuts`).
        var acted: Set<String> = []

        mutating func past(of id: String, in entries: [String: Entry]) -> PastSet {
            if let known = pasts[id] { return known }
            let computed = MembershipLog.pastSet(of: id, in: entries)
            pasts[id] = computed
            return computed
        }
    }

    static func pastSet(of id: String, in entries: [String: Entry]) -> PastSet {
        var set = PastSet()
        var stack = [id]
        while let next = stack.popLast() {
            guard let entry = entries[next], !set.contains(entry.index) else { continue }
            set.insert(entry.index)
            stack.append(contentsOf: entry.operation.parents)
        }
        return set
    }

    struct FoldResult {
        var state: MembershipState
        var refused: [String: MembershipError]
        var revocations: [String: [String]]
        var reinstatements: [String: [String]]
    }

    private static func fold(order: [String], entries: [String: Entry], operationsByActor: [String: [String]],
                             from start: MembershipState, skipping baseID: String?, rootCapable: Set<String>,
                             caches: inout Caches) -> FoldResult {
        let structural = handOverCuts(order: order, entries: entries, operationsByActor: operationsByActor, from: start,
                                      skipping: baseID, rootCapable: rootCapable, caches: &caches)
        var excluded = Set(structural.keys)
        var result = FoldResult(state: start, refused: [:], revocations: [:], reinstatements: [:])
        for _ in 0..<8 {
            result = FoldResult(state: start, refused: [:], revocations: [:], reinstatements: [:])
            var revokedBy: [String: String] = [:]
            for id in order where id != baseID {
                guard let operation = entries[id]?.operation else { continue }
                if let reason = structural[id] {
                    result.refused[id] = reason
                    continue
                }
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
                    if case .revokeUser(let key) = operation.envelope.operation {
                        result.revocations[key, default: []].append(id)
                        revokedBy[id] = key
                    }
                    if let reinstating { result.reinstatements[reinstating, default: []].append(id) }
                } catch {
                    result.refused[id] = error
                }
            }
            // Each standing revocation's past, once per pass (set lookups after).
            var cut = Set(structural.keys)
            for (key, standing) in result.revocations {
                let pasts = standing.map { caches.past(of: $0, in: entries) }
                let reinstated = (result.reinstatements[key] ?? []).map { ($0, caches.past(of: $0, in: entries)) }
                for id in operationsByActor[key] ?? [] {
                    guard let index = entries[id]?.index else { continue }
                    for (position, revocation) in standing.enumerated() where !pasts[position].contains(index) {
                        // Exempt: after a reinstatement that itself follows the revocation.
                        let exempt = reinstated.contains { reinstatement, past in
                            entries[revocation].map { past.contains($0.index) } == true
                                && isAncestorOrSelf(reinstatement, of: id, in: entries)
                        }
                        if !exempt {
                            cut.insert(id)
                            break
                        }
                    }
                }
            }
            if cut == excluded { break }
            excluded = cut
        }
        return result
    }

    /// The hand-over rule's cuts (see `refold`). Only hand-overs that count
    /// shape them: signed by a key that is or was root, and valid in their
    /// own past (the fold of the hand-over's past accepts it: its signer was
    /// root there and its successor an active admin). For each such signer:
    ///
    /// - if its successors acted on some of its hand-overs (signed anything
    ///   after them) and two of those are concurrent, the key signed
    ///   conflicting, accepted hand-overs: none stands, and the key keeps no
    ///   root power after them (the root freezes; it takes two stolen keys);
    /// - else if a successor acted on one, that one stands, and the key's
    ///   operations that could need the root and are not in its past are
    ///   refused (an old root key cannot sign "before" its hand-over, nor
    ///   void it with a second one its successor never took up);
    /// - else (nobody acted yet), the key's such operations concurrent with
    ///   any of its hand-overs are refused.
    private static func handOverCuts(order: [String], entries: [String: Entry], operationsByActor: [String: [String]],
                                     from start: MembershipState, skipping baseID: String?, rootCapable: Set<String>,
                                     caches: inout Caches) -> [String: MembershipError] {
        var cuts: [String: MembershipError] = [:]
        for key in rootCapable.sorted() {
            guard let ids = operationsByActor[key] else { continue }
            let handOvers = ids.filter { id in
                guard case .rotateRoot? = entries[id]?.operation.envelope.operation else { return false }
                return isValidInOwnPast(id, order: order, entries: entries, operationsByActor: operationsByActor, from: start,
                                        skipping: baseID, rootCapable: rootCapable, caches: &caches)
            }
            guard !handOvers.isEmpty else { continue }
            let handOverPasts = handOvers.map { caches.past(of: $0, in: entries) }
            let acted = handOvers.indices.filter { position in
                guard case .rotateRoot(let successor)? = entries[handOvers[position]]?.operation.envelope.operation,
                      let handOverIndex = entries[handOvers[position]]?.index else { return false }
                return (operationsByActor[successor] ?? []).contains { id in
                    guard let entry = entries[id], entry.index > handOverIndex else { return false }
                    let past = caches.past(of: id, in: entries)
                    guard past.contains(handOverIndex) else { return false }
                    // Acting counts only if it had not seen a concurrent
                    // hand-over by the same key: an honest admin syncing
                    // after a thief's backdated hand-over to it is not
                    // taking that one up.
                    return !handOvers.indices.contains { other in
                        guard other != position, let otherIndex = entries[handOvers[other]]?.index else { return false }
                        return past.contains(otherIndex) && !handOverPasts[position].contains(otherIndex)
                            && !handOverPasts[other].contains(handOverIndex)
                    }
                }
            }
            func concurrent(_ first: Int, _ second: Int) -> Bool {
                guard let a = entries[handOvers[first]]?.index, let b = entries[handOvers[second]]?.index else { return false }
                return !handOverPasts[second].contains(a) && !handOverPasts[first].contains(b)
            }
            let conflicting = acted.contains { first in acted.contains { second in first != second && concurrent(first, second) } }
            for position in acted { caches.acted.insert(handOvers[position]) }
            // The root handed back to this key later (after the acted
            // hand-over): its operations after that are its new term's.
            let first = acted.min { (entries[handOvers[$0]]?.depth ?? 0) < (entries[handOvers[$1]]?.depth ?? 0) }
            var returns: [Int] = []
            if let first, let firstIndex = entries[handOvers[first]]?.index {
                for signer in rootCapable.sorted() where signer != key {
                    for id in operationsByActor[signer] ?? [] {
                        guard case .rotateRoot(let target)? = entries[id]?.operation.envelope.operation, target == key,
                              let index = entries[id]?.index, caches.past(of: id, in: entries).contains(firstIndex),
                              isValidInOwnPast(id, order: order, entries: entries, operationsByActor: operationsByActor, from: start,
                                               skipping: baseID, rootCapable: rootCapable, caches: &caches) else { continue }
                        returns.append(index)
                    }
                }
            }
            for id in ids {
                guard let entry = entries[id] else { continue }
                if conflicting {
                    // The key signed conflicting hand-overs that were both
                    // taken up: it is treated as stolen, for everything after.
                    if !handOverPasts.allSatisfy({ $0.contains(entry.index) }) || handOvers.contains(id) {
                        cuts[id] = .unauthorized("signed by \(key) after or beside conflicting hand-overs of the root (the root is frozen)")
                    }
                    continue
                }
                guard mayNeedRoot(entry.operation.envelope.operation) else { continue }
                if let first {
                    let past = caches.past(of: id, in: entries)
                    if !handOverPasts[first].contains(entry.index), !returns.contains(where: { past.contains($0) }) {
                        cuts[id] = .unauthorized("signed by \(key) outside the past of the hand-over of the root its successor took up")
                    }
                } else {
                    for position in handOvers.indices {
                        guard let handOverIndex = entries[handOvers[position]]?.index else { continue }
                        if !handOverPasts[position].contains(entry.index), !caches.past(of: id, in: entries).contains(handOverIndex) {
                            cuts[id] = .unauthorized("signed by \(key) concurrently with its own hand-over of the root")
                            break
                        }
                    }
                }
            }
        }
        return cuts
    }

    /// Whether the fold of a hand-over's own past accepts it (cached: a past never changes).
    private static func isValidInOwnPast(_ id: String, order: [String], entries: [String: Entry], operationsByActor: [String: [String]],
                                         from start: MembershipState, skipping baseID: String?, rootCapable: Set<String>,
                                         caches: inout Caches) -> Bool {
        if let known = caches.validity[id] { return known }
        guard let operation = entries[id]?.operation, let index = entries[id]?.index else { return false }
        let past = caches.past(of: id, in: entries)
        let pastOrder = order.filter { $0 != id && (entries[$0].map { past.contains($0.index) } ?? false) }
        let pastEntries = entries.filter { past.contains($0.value.index) && $0.key != id }
        let pastActors = operationsByActor.mapValues { $0.filter { pastEntries[$0] != nil } }
        var folded = fold(order: pastOrder, entries: pastEntries, operationsByActor: pastActors, from: start, skipping: baseID,
                          rootCapable: rootCapable, caches: &caches).state
        let valid: Bool
        do { try folded.apply(operation); valid = true } catch { valid = false }
        caches.validity[id] = valid
        _ = index
        return valid
    }

    /// Operations whose authority can be the root's.
    private static func mayNeedRoot(_ operation: MembershipOperation) -> Bool {
        switch operation {
        case .rotateRoot, .checkpoint, .revokeUser, .addUser: return true
        default: return false
        }
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
    func ancestorsOrSelf(of ids: [String]) -> Set<String> { Self.ancestorsOrSelf(of: ids, in: entries) }

    static func ancestorsOrSelf(of ids: [String], in entries: [String: Entry]) -> Set<String> {
        var seen: Set<String> = []
        var stack = ids
        while let id = stack.popLast() {
            guard entries[id] != nil, seen.insert(id).inserted, let entry = entries[id] else { continue }
            stack.append(contentsOf: entry.operation.parents)
        }
        return seen
    }

    // MARK: checkpoints

    private mutating func adopt(_ operation: SignedOperation, _ content: CheckpointState) throws(MembershipError) -> InsertOutcome {
        guard let pinned = pinnedRoot ?? state.root else {
            throw .unauthorized("this log has no pinned root admin to check a checkpoint against")
        }
        let signer = try content.verifiedRoot(from: pinned)
        guard operation.actor == signer, content.root == signer else {
            throw .unauthorized("a checkpoint must be signed by the root admin it names, reached from the pinned root")
        }
        let parents = operation.parents
        let holdsPast = !parents.isEmpty && parents.allSatisfy { entries[$0] != nil }
        // A key that handed the root over signs no checkpoint again.
        let handedOver = (operationsByActor[operation.actor] ?? []).contains { id in
            if case .rotateRoot? = entries[id]?.operation.envelope.operation { return true }
            return false
        }
        guard !handedOver else { throw .unauthorized("\(operation.actor) handed the root over; it signs no checkpoint") }
        if !entries.isEmpty {
            // A log that holds operations takes only the next checkpoint, and
            // never one that names no predecessors (a migration starts a log).
            let (next, overflow) = baseSequence.addingReportingOverflow(1)
            guard !overflow, content.sequence == next else {
                throw .conflict("checkpoint \(content.sequence) is not this log's next (\(baseSequence) is the last adopted)")
            }
            guard !parents.isEmpty else { throw .invalid("a checkpoint with no predecessors can only start an empty log") }
            if !holdsPast {
                // Without its past the state cannot be checked here: it is
                // taken on the signature of the root this log knows now, not
                // on a chain a retired root key could sign anew.
                guard operation.actor == state.root else {
                    throw .unauthorized("a checkpoint whose past this log lacks must be signed by its current root (\(state.root ?? "none"))")
                }
            }
        } else {
            guard content.sequence >= 1 else { throw .invalid("checkpoint sequences start at 1") }
        }
        if let prunedAt = content.prunedAt {
            // Pruning is of logins expired when the root signed: never later.
            guard let signedAt = operation.timestampMillis, prunedAt >= 0, UInt64(prunedAt) <= signedAt / 1000 else {
                throw .invalid("a checkpoint prunes only what expired by its own signed time")
            }
        }
        let adopted = try MembershipState(checkpoint: content)
        if holdsPast {
            // This log can check the checkpoint against its own fold of the
            // checkpoint's past: a root that signs a state the log does not
            // lead to is refused here, not trusted.
            let past = ancestorsOrSelf(of: parents)
            var caches = Caches(pasts: pasts, validity: handOverValidity)
            let folded = Self.fold(order: order.filter { past.contains($0) }, entries: entries.filter { past.contains($0.key) },
                                   operationsByActor: operationsByActor.mapValues { $0.filter { past.contains($0) } },
                                   from: baseState, skipping: base?.id, rootCapable: rootCapable, caches: &caches).state
            guard folded.root == operation.actor else {
                throw .unauthorized("checkpoint signed by \(operation.actor), who is not the root at its predecessors")
            }
            guard folded.checkpointState(sequence: content.sequence, rootChain: content.rootChain, prunedAt: content.prunedAt) == content else {
                throw .invalid("the checkpoint's state is not the fold of the log at its predecessors")
            }
        }
        let replaced = entries.count
        entries = [operation.id: Entry(operation: operation, depth: 0, index: 0)]
        nextIndex = 1
        pasts = [:]
        handOverValidity = [:]
        keysWithHistory = []
        settledTargets = []
        baseRootKey = content.root
        rotations = []
        rootCapable = [content.root]
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
