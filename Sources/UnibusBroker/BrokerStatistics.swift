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
    public let authorizationFailures = ManagedAtomic<Int>(0)
    public let permissionViolations = ManagedAtomic<Int>(0)
    public let protocolViolations = ManagedAtomic<Int>(0)

    init() {}
}
