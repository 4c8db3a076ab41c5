import NIOCore
import UnibusWire

/// Allow/deny subject filters for one direction (publish or subscribe).
/// Empty `allow` means everything not denied; `deny` always wins.
public struct SubjectPermission: Sendable, Equatable, Codable {
    public var allow: [String]
    public var deny: [String]
    /// Stock clients' default inboxes: filters `_INBOX.<token>.…` with a
    /// literal token are allowed too (never a wildcard at that level, so no
    /// one listens to every inbox), except a token that is another user's
    /// nkey (those inboxes are their owners' alone). `inboxOwner` is this
    /// connection's user nkey. Not read from allowlist files.
    public var inboxOwner: String?

    public init(allow: [String] = [], deny: [String] = [], inboxOwner: String? = nil) {
        self.allow = allow
        self.deny = deny
        self.inboxOwner = inboxOwner
    }

    public static let everything = SubjectPermission()

    private enum CodingKeys: String, CodingKey { case allow, deny }

    /// Either list may be omitted in files.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        allow = try container.decodeIfPresent([String].self, forKey: .allow) ?? []
        deny = try container.decodeIfPresent([String].self, forKey: .deny) ?? []
    }

    /// Whether a literal subject (publish) is permitted.
    public func permits(subject: String) -> Bool {
        if deny.contains(where: { Subject.matches(filter: $0, subject: subject) }) { return false }
        return allow.isEmpty || allow.contains { Subject.matches(filter: $0, subject: subject) }
    }

    /// Whether a subscription filter is permitted: it must lie inside an
    /// allowed filter, and no denied filter may cover it. A filter that only
    /// partly overlaps a denied one (`a.b.*` and `a.*.c`) is permitted, and
    /// the overlap is filtered at delivery (`denied(within:)`), as nats-server does.
    public func permits(filter: String) -> Bool {
        if deny.contains(where: { Self.filter($0, covers: filter) }) { return false }
        return allow.isEmpty || allow.contains { Self.filter($0, covers: filter) } || isOwnInboxToken(filter)
    }

    /// Whether `filter` is `_INBOX.<literal token>.<anything>` with a token
    /// that is not another user's nkey (see `inboxOwner`).
    func isOwnInboxToken(_ filter: String) -> Bool {
        guard let owner = inboxOwner else { return false }
        let tokens = filter.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard tokens.count == 3, tokens[0] == "_INBOX", !tokens[2].isEmpty else { return false }
        let token = tokens[1]
        guard !token.isEmpty, token != "*", token != ">" else { return false }
        // A user nkey is 56 characters starting with U: only its owner may use it.
        if token.utf8.count == 56, token.first == "U", token != owner { return false }
        return true
    }

    /// The denied filters some subject matching `filter` could match: what
    /// delivery to a subscription on `filter` must check.
    public func denied(within filter: String) -> [String] {
        deny.filter { Self.intersect($0, filter) }
    }

    /// Whether some literal subject matches both filters.
    static func intersect(_ a: String, _ b: String) -> Bool {
        let x = a.split(separator: ".", omittingEmptySubsequences: false)
        let y = b.split(separator: ".", omittingEmptySubsequences: false)
        var index = 0
        while index < x.count && index < y.count {
            if x[index] == ">" || y[index] == ">" { return true }
            if x[index] != "*" && y[index] != "*" && x[index] != y[index] { return false }
            index += 1
        }
        return x.count == y.count
    }

    /// Whether every subject `inner` matches is also matched by `outer`.
    static func filter(_ outer: String, covers inner: String) -> Bool {
        let o = outer.split(separator: ".", omittingEmptySubsequences: false)
        let i = inner.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in o.enumerated() {
            if token == ">" { return i.count > index }
            guard index < i.count else { return false }
            let other = i[index]
            if other == ">" { return false }
            if token == "*" { continue }
            if other == "*" || token != other { return false }
        }
        return o.count == i.count
    }
}

/// nats-server's `allow_responses`: a connection may publish to the reply
/// subject of a message delivered to it (a request), up to `maximum` times
/// within `expiry`, even where its publish permissions do not reach.
public struct ResponsePermission: Sendable, Equatable, Codable {
    public var maximum: Int
    public var expiry: TimeAmount

    public init(maximum: Int = 1, expiry: TimeAmount = .minutes(2)) {
        self.maximum = max(1, maximum)
        self.expiry = expiry
    }

    public static let standard = ResponsePermission()

    private enum CodingKeys: String, CodingKey { case max, expires }

    /// `{"max": 1, "expires": 120}` (seconds); both optional.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let maximum = try container.decodeIfPresent(Int.self, forKey: .max) ?? 1
        let seconds = try container.decodeIfPresent(Int.self, forKey: .expires) ?? 120
        guard (1...1_000_000).contains(maximum), (1...86_400).contains(seconds) else {
            throw DecodingError.dataCorruptedError(forKey: .max, in: container,
                                                   debugDescription: "allow_responses: max must be 1 to 1000000 and expires 1 to 86400 seconds")
        }
        self.init(maximum: maximum, expiry: .seconds(Int64(seconds)))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(maximum, forKey: .max)
        try container.encode(Int(expiry.nanoseconds / 1_000_000_000), forKey: .expires)
    }
}

/// What one connection may publish and subscribe to.
public struct Permissions: Sendable, Equatable, Codable {
    public var publish: SubjectPermission
    public var subscribe: SubjectPermission
    /// Replies allowed to requests this connection receives; nil = none
    /// beyond `publish`.
    public var responses: ResponsePermission?

    public init(publish: SubjectPermission = .everything, subscribe: SubjectPermission = .everything,
                responses: ResponsePermission? = nil) {
        self.publish = publish
        self.subscribe = subscribe
        self.responses = responses
    }

    public static let everything = Permissions()

    private enum CodingKeys: String, CodingKey {
        case publish, subscribe
        case responses = "allow_responses"
    }

    /// Either direction may be omitted in files (omitted = unrestricted);
    /// `allow_responses` is `true` (defaults) or `{"max", "expires"}`.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        publish = try container.decodeIfPresent(SubjectPermission.self, forKey: .publish) ?? .everything
        subscribe = try container.decodeIfPresent(SubjectPermission.self, forKey: .subscribe) ?? .everything
        if let flag = try? container.decodeIfPresent(Bool.self, forKey: .responses) {
            responses = flag ? .standard : nil
        } else {
            responses = try container.decodeIfPresent(ResponsePermission.self, forKey: .responses)
        }
    }
}

/// Decides whether a user (an Ed25519 key, shown as a "U…" nkey) may connect
/// and with which permissions. The membership service implements this; a
/// static allowlist file stands in until it exists.
public protocol Authorizer: Sendable {
    /// Permissions for `userNKey`, or nil if it may not connect.
    func permissions(forUser userNKey: String) -> Permissions?
    /// Whether a new connection of `userNKey` (already allowed) is admitted
    /// now: false while a killswitch refuses new connections. Asked at
    /// CONNECT only, never for connections already open.
    func admits(newConnectionOf userNKey: String) -> Bool
}

extension Authorizer {
    public func admits(newConnectionOf userNKey: String) -> Bool { true }
}
