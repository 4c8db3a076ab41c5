import UnibusBroker
import UnibusCrypto
import UnibusMembership

/// A node: the broker and the membership store it authorizes from. Every
/// accepted membership operation is applied to the open connections before
/// `apply` returns: permissions follow room membership live, and a revoked
/// user's connections are closed.
public final class Node: Sendable {
    public let broker: Broker
    public let membership: MembershipStore

    public init(broker: Broker, membership: MembershipStore) {
        self.broker = broker
        self.membership = membership
    }

    /// Builds the broker configuration's authorizer for `store`.
    public static func authorizer(for store: MembershipStore) -> any Authorizer {
        MembershipAuthorizer(store: store)
    }

    /// Verifies, applies and persists `operation`, then brings open
    /// connections in line with the new state.
    @discardableResult
    public func apply(_ operation: SignedOperation) async throws(MembershipError) -> MembershipState {
        let state = try membership.append(operation)
        if case .revokeUser(let key) = operation.envelope.operation {
            await broker.disconnect(userNKey: key)
        }
        await broker.reauthorize()
        return state
    }
}
