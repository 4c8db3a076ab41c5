import Foundation
import NIOCore
import NIOSSL

/// Why a connection to a node failed, in words that name the thing and the
/// fix. NIO and BoringSSL describe the same mistakes as "I/O on closed
/// channel", `CERTIFICATE_VERIFY_FAILED at …/handshake.cc:320` or
/// "Couldn't find <none> in certificate"; an operator needs to know which
/// flag or file is wrong. Shared by the control-plane client and the
/// data-plane connection.
public enum ConnectionDiagnosis {
    /// `plane` is what was dialed ("control plane", "NATS port"); `caPath`
    /// is the pinned CA, if any.
    public static func describe(_ error: Error, address: String, plane: String, caPath: String?) -> String {
        var text = "\(error)"
        // Errors that already start with the address are not prefixed twice.
        while text.hasPrefix(address + ": ") { text.removeFirst(address.utf8.count + 2) }
        let ca = caPath.map { "--ca \($0)" } ?? "the pinned CA"
        if text.contains("CERTIFICATE_REQUIRED") {
            return "\(address): the node requires a client certificate: give --cert and --key "
                + "(a user certificate from the node's client CA: deploy/make-certs.sh OUT user:NAME)"
        }
        if text.contains("ALERT_BAD_CERTIFICATE") || text.contains("ALERT_UNKNOWN_CA") || text.contains("CERTIFICATE_UNKNOWN") {
            return "\(address): the node refused this client certificate (--cert): it must come from the node's client CA (--tls-client-ca)"
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return "\(address): the node's certificate does not chain to \(ca). Give the CA that issued the node's certificate "
                + "(client-ca.pem from deploy/make-certs.sh), not a node certificate or another CA"
        }
        if text.contains("Couldn't find") && text.contains("in certificate") {
            let bare = address.range(of: "://").map { String(address[$0.upperBound...]) } ?? address
            let host = bare.split(separator: ":").dropLast().joined(separator: ":")
            return "\(address): the node's certificate does not name \(host). Connect by a name or address it lists, "
                + "or reissue it (deploy/make-certs.sh NODE=\(host),…)"
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") || text.contains("PACKET_LENGTH_TOO_LONG")
            || text.contains("RECORD_TOO_LARGE") || text.contains("unexpectedEOF") {
            return "\(address) did not speak TLS as the \(plane) does: is this the \(plane)'s port? "
                + "(the NATS port is --listen, 4222 by default; the control plane is --control-listen, 4280 by default)"
        }
        if text.contains("connectTimeout") {
            return "\(address): no answer within the connect timeout (wrong address, or a firewall)"
        }
        if (error as? IOError)?.errnoCode == ECONNREFUSED || text.contains("Connection refused") || text.contains("connection refused") {
            return "\(address): connection refused (nothing listens there: is the node running, and is this its \(plane) port?)"
        }
        if text.contains("ioOnClosedChannel") || text.contains("I/O on closed channel") {
            return "\(address): the node closed the connection during the TLS handshake (wrong port, or a TLS mismatch)"
        }
        // No source paths of the TLS library in what the user reads.
        let trimmed = text.replacingOccurrences(of: #" at /[^\]\)]*"#, with: "", options: .regularExpression)
        return "\(address): \(trimmed.prefix(300))"
    }
}
