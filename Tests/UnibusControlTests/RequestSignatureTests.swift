import Foundation
import Testing
import UnibusControl
import UnibusControlClient
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

    @Test func aSignedRequestVerifiesOnceOnly() throws {
        let verifier = RequestVerifier(nodeID: nodeID)
        let signed = headers()
        let verified = try verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }).get()
        #expect(verified.caller == caller.userNKey)
        // Verifying alone spends nothing (the caller is not known yet) ...
        #expect(verifier.rememberedNonces == 0)
        #expect(verifier.claim(verified) == nil)
        // ... claiming does, once.
        #expect(verifier.claim(verified) == .replayed)
        #expect(verifier.rememberedNonces == 1)
    }

    /// Absurd values in any header are refused by name, never trap (the
    /// timestamp once overflowed `now - timestamp` and killed the node).
    @Test(arguments: ["-9223372036854775808", "9223372036854775807", "99999999999999999999", "-1", "+5", " 1", "1e9", "", "0x10"])
    func absurdTimestampsAreRefused(_ value: String) {
        let verifier = RequestVerifier(nodeID: nodeID)
        var signed = headers()
        signed[RequestSignature.timestampHeader] = value
        switch verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }) {
        case .failure(.missing(RequestSignature.timestampHeader)), .failure(.skew): break
        case let other: Issue.record("timestamp \(value) gave \(other)")
        }
    }

    @Test func oversizedAndOddHeadersAreRefused() {
        let verifier = RequestVerifier(nodeID: nodeID)
        for (header, value) in [(RequestSignature.nonceHeader, String(repeating: "a", count: 65)),
                                (RequestSignature.nonceHeader, "short"),
                                (RequestSignature.nonceHeader, "ééééééééééééééééééééééééééééééé"),
                                (RequestSignature.nonceHeader, "abc def ghijkl"),
                                (RequestSignature.signatureHeader, String(repeating: "A", count: 10_000)),
                                (RequestSignature.signatureHeader, "AAAA"),
                                (RequestSignature.keyHeader, "U" + String(repeating: "A", count: 1000))] {
            var signed = headers()
            signed[header] = value
            #expect(verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }) == .failure(.missing(header)),
                    "\(header): \(value.prefix(20))")
        }
    }

    @Test func theNonceMemoryIsBoundedAndForgets() throws {
        let verifier = RequestVerifier(nodeID: nodeID, window: 60, maximumNonces: 3)
        let start = Date()
        var requests: [VerifiedRequest] = []
        for _ in 0..<4 {
            let signed = headers(at: start)
            requests.append(try verifier.verify(method: "POST", path: "/v1/operations", body: Array("{}".utf8), header: { signed[$0] }, now: start).get())
        }
        #expect(requests.count == 4)
        for request in requests.prefix(3) { #expect(verifier.claim(request, now: start) == nil) }
        #expect(verifier.claim(requests[3], now: start) == .busy)
        // Twice the window (and 2 s, so a request fresh at the window's edge
        // is never forgotten while still fresh) later every nonce is evicted.
        #expect(verifier.claim(requests[3], now: start.addingTimeInterval(121)) == .busy)
        #expect(verifier.claim(requests[3], now: start.addingTimeInterval(123)) == nil)
        #expect(verifier.rememberedNonces == 1)
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
