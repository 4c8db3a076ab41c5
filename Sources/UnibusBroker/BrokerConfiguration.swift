import NIOCore
import NIOPosix
import NIOSSL
import UnibusCrypto

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
    /// Per connection; 0 = unlimited. A client past it gets
    /// `-ERR 'maximum subscriptions exceeded'` for each further SUB.
    public var maxSubscriptions: Int = 10_000
    /// Per authenticated user over all its connections; 0 = unlimited. Every
    /// distinct subscription is interest on each route peer, whose limit
    /// (`ClusterConfiguration.maxInterest`) must stay far above this.
    public var maxSubscriptionsPerUser: Int = 50_000
    /// Bytes a connection may send before its CONNECT is accepted when
    /// authentication is required: enough for CONNECT (a control line), far
    /// less than `maxPayload`, so an unauthenticated socket holds little.
    public var maxPreAuthBytes: Int = 8 * 1024
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
    /// TLS for client connections. Set, every client must upgrade after INFO
    /// (`tls_required`), as with nats-server's `tls {}` block.
    public var tls: BrokerTLS?
    /// Client URLs advertised in INFO besides the cluster's (see `cluster`).
    public var connectURLs: [String] = []
    /// Route links to other nodes; nil for a lone broker.
    public var cluster: ClusterConfiguration?
    /// Event loop threads; 0 = half the cores (at least one). Delivering to a
    /// connection on another loop costs a thread wake-up: on a 2-core machine
    /// one loop gave 15 % more request/reply throughput and a 2-5x lower p99
    /// than two (Tests/Benchmarks/broker.py), since clients need cores too.
    public var threads: Int = 0

    /// The number of event loop threads `threads` resolves to.
    public var resolvedThreads: Int { threads > 0 ? threads : max(1, System.coreCount / 2) }

    public init() {}
}

/// A CA file that cannot be used, named: without this, NIOSSL's "failed to
/// load certificate" would read as a problem with the certificate file.
public struct CertificateAuthorityFileError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path) \(reason)" }
}

/// TLS files as nodes read them: regular files (`RegularFile`, so a FIFO
/// cannot hang a start or a reload) of PEM, handed to NIOSSL as bytes. A
/// path that is not a regular file throws `SecretFileError`, naming it.
public enum PEMFile {
    /// The certificate chain in `path` (NIOSSL's error when it holds none).
    public static func chain(_ path: String) throws -> [NIOSSLCertificate] {
        try NIOSSLCertificate.fromPEMBytes(RegularFile.read(path))
    }

    /// The private key in `path` (NIOSSL's error when it holds none).
    public static func key(_ path: String) throws -> NIOSSLPrivateKey {
        try NIOSSLPrivateKey(bytes: RegularFile.read(path), format: .pem)
    }

    /// The CA certificates in `path`; without one,
    /// `CertificateAuthorityFileError` naming the path (NIOSSL's error
    /// would read as a problem with the certificate file).
    public static func authorities(_ path: String) throws -> [NIOSSLCertificate] {
        try authorities(pem: RegularFile.read(path), from: path)
    }

    /// The CA certificates in `bytes`, read from `path` earlier (named in the error).
    public static func authorities(pem bytes: [UInt8], from path: String) throws -> [NIOSSLCertificate] {
        do { return try NIOSSLCertificate.fromPEMBytes(bytes) } catch {
            throw CertificateAuthorityFileError(path: path, reason: "holds no PEM certificate (a DER file converts with `openssl x509 -inform der -in FILE`)")
        }
    }
}

/// Server certificate and key for client connections, and optionally a
/// client CA: with one, clients must present a certificate it issued.
public struct BrokerTLS: Sendable {
    public let context: NIOSSLContext
    public let verifiesClients: Bool
    /// The client CA's PEM bytes this context trusts (nil without one): the
    /// checks that keep it apart from the cluster CA look at these, not at a
    /// second read of the file.
    public let clientAuthorityPEM: [UInt8]?

    /// Loads PEM files (regular files only: `RegularFile`). Errors name the
    /// file and what is wrong with it.
    public init(certificateChainPath: String, privateKeyPath: String, clientCAPath: String? = nil) throws {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try PEMFile.chain(certificateChainPath).map { .certificate($0) },
            privateKey: .privateKey(try PEMFile.key(privateKeyPath)))
        configuration.minimumTLSVersion = .tlsv12
        clientAuthorityPEM = try clientCAPath.map { try RegularFile.read($0) }
        if let clientCAPath, let clientAuthorityPEM {
            configuration.trustRoots = .certificates(try PEMFile.authorities(pem: clientAuthorityPEM, from: clientCAPath))
            // The chain is verified; a client certificate names no host to match.
            configuration.certificateVerification = .noHostnameVerification
        }
        context = try NIOSSLContext(configuration: configuration)
        verifiesClients = clientCAPath != nil
    }
}
