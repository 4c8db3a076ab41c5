import NIOConcurrencyHelpers

/// A value a running node replaces on reload (TLS certificates and keys),
/// read once per new connection: connections already open keep what they
/// started with, the next one gets the new value.
public final class Reloadable<Value: Sendable>: Sendable {
    private let box: NIOLockedValueBox<Value>

    public init(_ value: Value) { box = NIOLockedValueBox(value) }

    public var current: Value { box.withLockedValue { $0 } }

    public func replace(with value: Value) { box.withLockedValue { $0 = value } }
}
