import NIOSSL

/// A client certificate and its key (PEM files), presented to nodes that
/// require one (`unibusd run --tls-client-ca`): `unibus --cert/--key`.
public struct ClientCertificate: Sendable, Equatable {
    public var certificatePath: String
    public var keyPath: String

    public init(certificatePath: String, keyPath: String) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
    }

    /// Adds the certificate chain and key to a client TLS configuration;
    /// the error names the file that cannot be used.
    public func apply(to configuration: inout TLSConfiguration) throws {
        do {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { .certificate($0) }
        } catch {
            throw ClientCertificateError(description: "cannot use the client certificate \(certificatePath) (--cert): \(error)")
        }
        do {
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
        } catch {
            throw ClientCertificateError(description: "cannot use the client key \(keyPath) (--key): \(error)")
        }
    }
}

/// A client certificate or key that cannot be loaded.
public struct ClientCertificateError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
