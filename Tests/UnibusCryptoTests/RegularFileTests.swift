import Foundation
import Testing
import UnibusCrypto

/// Configuration files (TLS certificates, keys, CA bundles, allowlists) are
/// read only from regular files: anything else at the path is refused at
/// once, where a plain read of a FIFO would wait forever (and hang a node's
/// start or reload).
@Suite("Regular files")
struct RegularFileTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "unibus-regular-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    @Test func aRegularFileIsReadThroughALink() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Data("hello".utf8).write(to: URL(fileURLWithPath: directory + "/a.pem"))
        #expect(symlink(directory + "/a.pem", directory + "/live.pem") == 0)
        #expect(try RegularFile.read(directory + "/a.pem") == Array("hello".utf8))
        // Certificate managers keep links to the current files: followed here (not for secrets).
        #expect(try RegularFile.read(directory + "/live.pem") == Array("hello".utf8))
        #expect(throws: SecretFileError.self) { try SecretFile.read(directory + "/live.pem", maximumSize: 100, missingHint: "") }
    }

    @Test func anythingElseIsRefusedAtOnceAndNamed() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fifo = directory + "/fifo.pem"
        #expect(mkfifo(fifo, 0o600) == 0)
        // No writer ever opens the FIFO: a blocking open or read would never return.
        #expect(throws: SecretFileError.notAFile(path: fifo, reason: "is not a regular file")) { try RegularFile.read(fifo) }
        #expect(throws: SecretFileError.notAFile(path: directory, reason: "is a directory; give the path of the file itself")) {
            try RegularFile.read(directory)
        }
        #expect(throws: SecretFileError.missing(path: directory + "/none.pem", hint: "")) { try RegularFile.read(directory + "/none.pem") }
        try Data(repeating: 0x41, count: 2000).write(to: URL(fileURLWithPath: directory + "/big.pem"))
        #expect(throws: SecretFileError.tooLarge(path: directory + "/big.pem", maximum: 1000)) {
            try RegularFile.read(directory + "/big.pem", maximumSize: 1000)
        }
        // The certificate check behind unibusd's CA mistakes reads the same way: a FIFO is "cannot tell".
        #expect(CertificateFiles.isIssued(fifo, by: fifo) == nil)
        #expect(SecretFileError.notAFile(path: fifo, reason: "is not a regular file").description == "\(fifo) is not a regular file")
    }
}
