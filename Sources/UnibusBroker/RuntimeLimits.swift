import Atomics

/// The broker's limits that may change while it runs (a signed `settings`
/// command): read on every check, so a change applies at once. The rest of
/// `BrokerConfiguration` is fixed for the broker's life.
public final class RuntimeLimits: Sendable {
    /// 0 = unlimited. Applies to connections registered after a change.
    public let maxConnections: ManagedAtomic<Int>
    /// Per connection; 0 = unlimited. Applies to the next SUB.
    public let maxSubscriptions: ManagedAtomic<Int>
    /// Per user over all its connections; 0 = unlimited.
    public let maxSubscriptionsPerUser: ManagedAtomic<Int>
    /// Advertised in INFO and enforced by connections opened after a change
    /// (a connection keeps the limit it was told).
    public let maxPayload: ManagedAtomic<Int>

    public init(_ configuration: BrokerConfiguration) {
        maxConnections = ManagedAtomic(configuration.maxConnections)
        maxSubscriptions = ManagedAtomic(configuration.maxSubscriptions)
        maxSubscriptionsPerUser = ManagedAtomic(configuration.maxSubscriptionsPerUser)
        maxPayload = ManagedAtomic(configuration.maxPayload)
    }
}
