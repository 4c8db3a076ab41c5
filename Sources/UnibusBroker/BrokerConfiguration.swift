import NIOCore
import NIOPosix

/// The broker's settings. Defaults match nats-server 2.9 where it has them.
public struct BrokerConfiguration: Sendable {
    public var host: String = "127.0.0.1"
    public var port: Int = 4222
    public var serverName: String = "unibus"
    /// Advertised in INFO; a larger PUB is `Maximum Payload Violation`.
    public var maxPayload: Int = 1024 * 1024
    public var maxControlLine: Int = 4096
    /// 0 = unlimited.
    public var maxConnections: Int = 65_536
    /// Per connection; 0 = unlimited.
    public var maxSubscriptions: Int = 0
    public var pingInterval: TimeAmount = .minutes(2)
    public var maxPingsOutstanding: Int = 2
    /// Outbound bytes a connection may have queued before it is a slow consumer.
    public var maxPendingBytes: Int = 64 * 1024 * 1024
    /// How long queued outbound bytes may go unwritten before the connection
    /// is a slow consumer.
    public var writeDeadline: TimeAmount = .seconds(10)
    /// Time a client has to send CONNECT when authentication is required.
    public var authTimeout: TimeAmount = .seconds(2)
    /// When set, every client must authenticate with an nkey it allows.
    public var authorizer: (any Authorizer)?
    /// Client URLs of the other nodes, advertised in INFO.
    public var connectURLs: [String] = []
    /// Event loop threads; 0 = half the cores (at least one). Delivering to a
    /// connection on another loop costs a thread wake-up: on a 2-core machine
    /// one loop gave 15 % more request/reply throughput and a 2-5x lower p99
    /// than two (Tests/Benchmarks/broker.py), since clients need cores too.
    public var threads: Int = 0

    /// The number of event loop threads `threads` resolves to.
    public var resolvedThreads: Int { threads > 0 ? threads : max(1, System.coreCount / 2) }

    public init() {}
}
