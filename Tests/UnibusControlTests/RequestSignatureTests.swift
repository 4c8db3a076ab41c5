import Foundation
import Testing
import UnibusControl
import UnibusCrypto

@Suite("Signed control-plane requests")
struct RequestSignatureTests {
    let caller = Identity()
    let nodeID = "NODEA"

    private func headers(method: String = "POST", path: String = "/v1/operations", body: [UInt8] = Array("{}".utf8),
                         node: String? = nil, at date: Date = Date()) -> [String: String] {
        Dictionary(uniqueKeysWithValues: RequestSignature.headers(method: method, path: path, body: body, nodeID: node ?? nodeID,
                                                                  identity: caller, now: date))
    }

    @Test func aSignedRequestVerifiesOnceOnly() {
        let verifier = RequestVerifier(nodeID: nodeID)
        let signed = headers()
        #expect(verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }) == .success(caller.userNKey))
        #expect(verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }) == .failure(.replayed))
    }

    @Test func anythingChangedBreaksTheSignature() {
        let verifier = RequestVerifier(nodeID: nodeID)
        let signed = headers()
        #expect(verifier.verify(method: "POST", path: "/v1/operations", body: Array("{ }".utf8), header: { signed[$0] }) == .failure(.badSignature))
        #expect(verifier.verify(method: "GET", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }) == .failure(.badSignature))
        #expect(verifier.verify(method: "POST", path: "/v1/users", body: Array("{}".utf8), header: { signed[$0] }) == .failure(.badSignature))
        let forOtherNode = headers(node: "NODEB")
        #expect(verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { forOtherNode[$0] }) == .failure(.badSignature))
    }

    @Test func skewBeyondTheWindowIsRefused() {
        let verifier = RequestVerifier(nodeID: nodeID)
        let old = headers(at: Date().addingTimeInterval(-120))
        guard case .failure(.skew) = verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { old[$0] }) else {
            Issue.record("a two-minute-old request was accepted")
            return
        }
        let future = headers(at: Date().addingTimeInterval(90))
        guard case .failure(.skew) = verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { future[$0] }) else {
            Issue.record("a request from the future was accepted")
            return
        }
    }

    @Test func missingHeadersAreNamed() {
        let verifier = RequestVerifier(nodeID: nodeID)
        var signed = headers()
        signed[RequestSignature.nonceHeader] = nil
        #expect(verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }) == .failure(.missing(RequestSignature.nonceHeader)))
        #expect(verifier.verify(method: "POST", path: "/v1/operations", body: [], header: { _ in nil }) == .failure(.missing(RequestSignature.keyHeader)))
    }

    @Test func theClientRefusesUnpinnedRemoteNodes() {
        #expect(throws: ControlClient.Failure.self) { try ControlClient(url: "https://10.1.2.3:4280", caPath: nil) }
        #expect(throws: ControlClient.Failure.self) { try ControlClient(url: "http://10.1.2.3:4280", caPath: nil) }
        #expect(throws: Never.self) { _ = try ControlClient(url: "http://127.0.0.1:4280", caPath: nil) }
    }
}
