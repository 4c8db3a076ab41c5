import Atomics

/// Counters for metrics and tests; monotonic unless named current.
public final class BrokerStatistics: Sendable {
    public let connectionsAccepted = ManagedAtomic<Int>(0)
    public let currentConnections = ManagedAtomic<Int>(0)
    public let messagesIn = ManagedAtomic<Int>(0)
    public let messagesOut = ManagedAtomic<Int>(0)
    public let bytesIn = ManagedAtomic<Int>(0)
    public let bytesOut = ManagedAtomic<Int>(0)
    public let slowConsumers = ManagedAtomic<Int>(0)
    public let staleConnections = ManagedAtomic<Int>(0)
    /// Refused authentications by reason.
    public let authorizationFailuresByReason: [AuthFailureReason: ManagedAtomic<Int>] =
        Dictionary(uniqueKeysWithValues: AuthFailureReason.allCases.map { ($0, ManagedAtomic<Int>(0)) })

    func countAuthorizationFailure(_ reason: AuthFailureReason) {
        authorizationFailuresByReason[reason]?.wrappingIncrement(ordering: .relaxed)
    }

    /// All refused authentications.
    public var authorizationFailureTotal: Int {
        authorizationFailuresByReason.values.reduce(0) { $0 + $1.load(ordering: .relaxed) }
    }
    public let permissionViolations = ManagedAtomic<Int>(0)
    public let protocolViolations = ManagedAtomic<Int>(0)
    /// Messages forwarded to routes (one per route per message).
    public let routedOut = ManagedAtomic<Int>(0)
    /// Messages received from routes.
    public let routedIn = ManagedAtomic<Int>(0)
    /// Route links that became active.
    public let routesOpened = ManagedAtomic<Int>(0)
    /// Route links refused or cut: failed proof of the claimed node id, or
    /// a peer over its interest limit.
    public let routesRefused = ManagedAtomic<Int>(0)
    /// Connection objects (clients and routes) alive in memory: returns to
    /// the number of open connections once closed ones are released. A value
    /// that keeps growing under churn is a leak.
    public let liveConnectionObjects = ManagedAtomic<Int>(0)
    /// Signed control-plane requests refused (bad headers, skew, signature,
    /// replay, unknown or revoked caller).
    public let controlRefusals = ManagedAtomic<Int>(0)
    /// Control-plane connections refused at the connection limit, or closed
    /// for idling, a slow TLS handshake or oversized headers.
    public let controlConnectionsCut = ManagedAtomic<Int>(0)

    public func countControlRefusal() { controlRefusals.wrappingIncrement(ordering: .relaxed) }

    init() {}
}

/// Why a client was refused or disconnected for authorization.
public enum AuthFailureReason: String, CaseIterable, Sendable {
    /// No CONNECT with nkey and signature (or another operation first).
    case noCredentials = "no_credentials"
    /// The signature of the nonce does not verify.
    case badSignature = "bad_signature"
    /// A valid key the authorizer does not allow (unknown or revoked).
    case notAllowed = "not_allowed"
    /// Disconnected after its user was revoked or removed.
    case revoked
    /// No CONNECT within the authentication timeout.
    case timeout
    /// Refused or closed by an engaged killswitch.
    case killswitch
}
