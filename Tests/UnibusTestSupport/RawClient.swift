import Foundation
import NIOConcurrencyHelpers
import NIOCore
import UnibusBroker
import UnibusCrypto

/// A blocking TCP client speaking raw protocol text, for broker and node tests.
public final class RawClient {
    private let fd: Int32
    private var buffer = [UInt8]()
    public private(set) var closedByServer = false

    public init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw POSIXError(.ECONNREFUSED) }
    }

    deinit { close(fd) }

    public func send(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sets how much the kernel buffers for us (to make a slow consumer).
    public func setReceiveBuffer(_ bytes: Int32) {
        var value = bytes
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Reads until `text` appears, the server closes, or `timeout` passes; returns everything read.
    @discardableResult
    public func read(until text: String? = nil, timeout: Double = 2) -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let text, String(decoding: buffer, as: UTF8.self).contains(text) { break }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, 50)
            if ready <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = recv(fd, &chunk, chunk.count, 0)
            if count <= 0 {
                closedByServer = true
                break
            }
            buffer.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: buffer, as: UTF8.self)
    }

    public func clear() { buffer.removeAll() }

    public func send(bytes: [UInt8]) {
        var bytes = bytes
        _ = bytes.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// PUB with a binary payload.
    public func publish(_ subject: String, _ payload: [UInt8]) {
        send(bytes: Array("PUB \(subject) \(payload.count)\r\n".utf8) + payload + [13, 10])
    }

    /// PING, and waits for its PONG (everything before it was processed).
    @discardableResult
    public func ping(timeout: Double = 5) -> Bool {
        clear()
        send("PING\r\n")
        return read(until: "PONG", timeout: timeout).contains("PONG")
    }
}

extension RawClient {
    /// Reads INFO and answers with a CONNECT that signs its nonce as
    /// `identity`, then PING (the caller reads the verdict).
    public func authenticate(as identity: Identity) throws {
        let info = read(until: "\r\n")
        guard let nonce = nonce(fromInfo: info) else { throw POSIXError(.EPROTO) }
        let signature = Base64.encode(identity.sign(Array(nonce.utf8)), alphabet: .url)
        clear()
        send("CONNECT {\"verbose\":false,\"nkey\":\"\(identity.userNKey)\",\"sig\":\"\(signature)\"}\r\nPING\r\n")
    }
}

/// Starts a broker on a free loopback port for one test.
public func withBroker(_ configure: (inout BrokerConfiguration) -> Void = { _ in },
                _ body: (Broker, Int) async throws -> Void) async throws {
    var configuration = BrokerConfiguration()
    configuration.host = "127.0.0.1"
    configuration.port = 0
    configuration.threads = 2
    configure(&configuration)
    let broker = Broker(configuration: configuration)
    let port = try await broker.start()
    do {
        try await body(broker, port)
    } catch {
        await broker.shutdown()
        throw error
    }
    await broker.shutdown()
}

/// The nonce from an INFO line.
public func nonce(fromInfo info: String) -> String? {
    guard let range = info.range(of: "\"nonce\":\"") else { return nil }
    return String(info[range.upperBound...].prefix { $0 != "\"" })
}

/// A loopback TCP port that was free a moment ago (for configurations that
/// must name their peers' ports before anything starts).
///
/// Chosen at random below the kernel's ephemeral range: a port the kernel
/// handed out (bind to port 0) can be handed out again to another socket's
/// outgoing connection, such as a node dialling its routes, before the
/// process it was meant for binds it. Outgoing connections never take a port
/// outside that range, so only another listener can race for these. A port
/// is handed out once per process, so concurrent tests never share one.
public func freeLoopbackPort() -> Int {
    let (low, high) = portsBelowTheEphemeralRange()
    if low < high {
        for _ in 0..<200 {
            let candidate = Int.random(in: low..<high)
            guard loopbackPortIsFree(candidate),
                  handedOutPorts.withLockedValue({ $0.insert(candidate).inserted }) else { continue }
            return candidate
        }
    }
    return kernelChosenLoopbackPort()
}

private let handedOutPorts = NIOLockedValueBox<Set<Int>>([])

/// The range `freeLoopbackPort` draws from: from 10000 up to the start of
/// `/proc/sys/net/ipv4/ip_local_port_range` (empty if that cannot be read).
private func portsBelowTheEphemeralRange() -> (Int, Int) {
    guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8),
          let first = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first,
          let ephemeralLow = Int(first) else { return (0, 0) }
    return (10000, ephemeralLow)
}

/// Whether a plain bind (no SO_REUSEADDR, so a port in TIME_WAIT counts as
/// taken) to 127.0.0.1:`port` succeeds.
private func loopbackPortIsFree(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// A port the kernel picks (bind to port 0): the fallback when the
/// ephemeral range is unknown or the range below it is full.
private func kernelChosenLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    var bound = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: bound.sin_port))
}
