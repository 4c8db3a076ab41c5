import NIOConcurrencyHelpers
import UnibusWire

/// A queue group as one subject matches it: one member receives each message.
/// Members may include route entries (the group has members on that node).
struct QueueGroup: Sendable {
    let name: String
    var members: [Subscription]
}

/// What a published subject matches: local plain subscriptions, queue groups
/// (local members and routes whose far node has members), and the routes
/// whose far node has plain interest (each listed once).
struct MatchResult: Sendable {
    var plain: [Subscription] = []
    var queues: [QueueGroup] = []
    var routes: [RouteConnection] = []
    var isEmpty: Bool { plain.isEmpty && queues.isEmpty && routes.isEmpty }
    /// Where each group name sits in `queues` while matching: merging the
    /// groups of several filters stays linear (a search per group made a
    /// subject with thousands of groups quadratic, under the index lock).
    fileprivate var queueSlots: [String: Int] = [:]
}

/// The subscription index (nats-server's "sublist"): a trie over subject
/// tokens with `*` and `>` branches, plus a cache of recent match results so
/// the publish path is one locked dictionary lookup.
final class SubjectIndex: @unchecked Sendable {
    // @unchecked: all state is guarded by `lock`.
    private final class Node {
        var next: Level?
        var plain: [ObjectIdentifier: Subscription] = [:]
        var queues: [String: [ObjectIdentifier: Subscription]] = [:]
        var isEmpty: Bool { next == nil && plain.isEmpty && queues.isEmpty }
    }

    private final class Level {
        var literal: [Substring: Node] = [:]
        var star: Node?
        var full: Node?
        var isEmpty: Bool { literal.isEmpty && star == nil && full == nil }
    }

    private let lock = NIOLock()
    private let root = Level()
    // Unchecked: read on every publish, always under `lock` (not re-entrant), so accesses cannot overlap.
    @exclusivity(unchecked) private var cache: [String: MatchResult] = [:]
    private var subscriptionCount = 0
    static let cacheLimit = 4096

    var count: Int { lock.withLock { subscriptionCount } }

    func insert(_ subscription: Subscription) {
        lock.withLock {
            var level = root
            var node: Node! = nil
            let tokens = subscription.subject.split(separator: ".", omittingEmptySubsequences: false)
            for (index, token) in tokens.enumerated() {
                switch token {
                case "*":
                    if level.star == nil { level.star = Node() }
                    node = level.star
                case ">":
                    if level.full == nil { level.full = Node() }
                    node = level.full
                default:
                    if let existing = level.literal[token] {
                        node = existing
                    } else {
                        node = Node()
                        level.literal[token] = node
                    }
                }
                if index < tokens.count - 1 {
                    if node.next == nil { node.next = Level() }
                    level = node.next!
                }
            }
            let key = ObjectIdentifier(subscription)
            if let queue = subscription.queue {
                node.queues[queue, default: [:]][key] = subscription
            } else {
                node.plain[key] = subscription
            }
            subscriptionCount += 1
            invalidateCache(for: subscription.subject)
        }
    }

    func remove(_ subscription: Subscription) {
        lock.withLock {
            let tokens = subscription.subject.split(separator: ".", omittingEmptySubsequences: false)
            if removeRecursive(level: root, tokens: tokens[...], subscription: subscription) {
                subscriptionCount -= 1
                invalidateCache(for: subscription.subject)
            }
        }
    }

    /// Removes and prunes empty nodes; returns whether the subscription was present.
    private func removeRecursive(level: Level, tokens: ArraySlice<Substring>, subscription: Subscription) -> Bool {
        guard let token = tokens.first else { return false }
        let node: Node?
        switch token {
        case "*": node = level.star
        case ">": node = level.full
        default: node = level.literal[token]
        }
        guard let node else { return false }
        var removed: Bool
        if tokens.count == 1 {
            let key = ObjectIdentifier(subscription)
            if let queue = subscription.queue {
                removed = node.queues[queue]?.removeValue(forKey: key) != nil
                if node.queues[queue]?.isEmpty == true { node.queues[queue] = nil }
            } else {
                removed = node.plain.removeValue(forKey: key) != nil
            }
        } else {
            guard let next = node.next else { return false }
            removed = removeRecursive(level: next, tokens: tokens.dropFirst(), subscription: subscription)
            if next.isEmpty { node.next = nil }
        }
        if node.isEmpty {
            switch token {
            case "*": level.star = nil
            case ">": level.full = nil
            default: level.literal[token] = nil
            }
        }
        return removed
    }

    private func invalidateCache(for filter: String) {
        if cache.isEmpty { return }
        if filter.contains("*") || filter.contains(">") {
            for key in cache.keys where Subject.matches(filter: filter, subject: key) {
                cache[key] = nil
            }
        } else {
            cache[filter] = nil
        }
    }

    /// The subscriptions matching a literal subject.
    func match(_ subject: String) -> MatchResult {
        lock.withLock {
            if let cached = cache[subject] { return cached }
            var result = MatchResult()
            let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
            collect(level: root, tokens: tokens[...], into: &result)
            result.queueSlots = [:]
            if cache.count >= Self.cacheLimit {
                // Drop a small arbitrary batch rather than track recency on
                // the hot path; small, so no single publish pays a long sweep
                // (request/reply makes a new reply subject per request).
                var dropped = 0
                for key in cache.keys {
                    cache[key] = nil
                    dropped += 1
                    if dropped >= Self.cacheLimit / 32 { break }
                }
            }
            cache[subject] = result
            return result
        }
    }

    private func collect(level: Level, tokens: ArraySlice<Substring>, into result: inout MatchResult) {
        guard let token = tokens.first else { return }
        let rest = tokens.dropFirst()
        if let full = level.full { add(full, into: &result) }
        if let star = level.star { visit(star, rest: rest, into: &result) }
        if let literal = level.literal[token] { visit(literal, rest: rest, into: &result) }
    }

    private func visit(_ node: Node, rest: ArraySlice<Substring>, into result: inout MatchResult) {
        if rest.isEmpty {
            add(node, into: &result)
        } else if let next = node.next {
            collect(level: next, tokens: rest, into: &result)
        }
    }

    private func add(_ node: Node, into result: inout MatchResult) {
        for subscription in node.plain.values {
            if subscription.connection.isRoute {
                // A route takes one copy however many of its filters match.
                if let route = subscription.connection as? RouteConnection, !result.routes.contains(where: { $0 === route }) {
                    result.routes.append(route)
                }
            } else {
                result.plain.append(subscription)
            }
        }
        // Queue groups are one group per name, whichever filters matched
        // (a message goes to one member of "workers", not one per filter).
        for (name, members) in node.queues where !members.isEmpty {
            if let existing = result.queueSlots[name] {
                result.queues[existing].members.append(contentsOf: members.values)
            } else {
                result.queueSlots[name] = result.queues.count
                result.queues.append(QueueGroup(name: name, members: Array(members.values)))
            }
        }
    }
}
