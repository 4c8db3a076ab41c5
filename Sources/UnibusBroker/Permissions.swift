import UnibusWire

/// Allow/deny subject filters for one direction (publish or subscribe).
/// Empty `allow` means everything not denied; `deny` always wins.
public struct SubjectPermission: Sendable, Equatable, Codable {
    public var allow: [String]
    public var deny: [String]

    public init(allow: [String] = [], deny: [String] = []) {
        self.allow = allow
        self.deny = deny
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
    /// allowed filter, and no denied filter may be inside it or cover it.
    public func permits(filter: String) -> Bool {
        if deny.contains(where: { Self.filter($0, covers: filter) || Self.filter(filter, covers: $0) || $0 == filter }) {
            return false
        }
        return allow.isEmpty || allow.contains { Self.filter($0, covers: filter) }
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

/// What one connection may publish and subscribe to.
public struct Permissions: Sendable, Equatable, Codable {
    public var publish: SubjectPermission
    public var subscribe: SubjectPermission

    public init(publish: SubjectPermission = .everything, subscribe: SubjectPermission = .everything) {
        self.publish = publish
        self.subscribe = subscribe
    }

    public static let everything = Permissions()

    private enum CodingKeys: String, CodingKey { case publish, subscribe }

    /// Either direction may be omitted in files (omitted = unrestricted).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        publish = try container.decodeIfPresent(SubjectPermission.self, forKey: .publish) ?? .everything
        subscribe = try container.decodeIfPresent(SubjectPermission.self, forKey: .subscribe) ?? .everything
    }
}

/// Decides whether a user (an Ed25519 key, shown as a "U…" nkey) may connect
/// and with which permissions. The membership service implements this; a
/// static allowlist file stands in until it exists.
public protocol Authorizer: Sendable {
    /// Permissions for `userNKey`, or nil if it may not connect.
    func permissions(forUser userNKey: String) -> Permissions?
}
