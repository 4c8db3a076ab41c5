import Foundation
import Testing
import UnibusCrypto
@testable import UnibusFleet

@Suite struct SignedDocumentTests {
    struct Sample: Codable, Equatable { var node: String; var value: Int }

    @Test func roundTripsAndIsPlainJSON() throws {
        let key = Ed25519KeyPair()
        let node = NKey.encodePublicKey(key.publicKey, type: .server)
        let payload = SignedDocument.seal(Sample(node: node, value: 7), context: "test/1", key: key)
        // A stock JSON reader sees the fields and the signature.
        let object = try JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any]
        #expect(object?["value"] as? Int == 7)
        #expect((object?["signature"] as? String)?.count == 86)
        let opened = try SignedDocument.open(payload, as: Sample.self, context: "test/1", signerType: .server) { $0.node }
        #expect(opened == Sample(node: node, value: 7))
    }

    @Test func refusesTamperingAnotherContextAndAnotherSigner() throws {
        let key = Ed25519KeyPair()
        let node = NKey.encodePublicKey(key.publicKey, type: .server)
        let payload = SignedDocument.seal(Sample(node: node, value: 7), context: "test/1", key: key)
        let tampered = Array(String(decoding: payload, as: UTF8.self).replacingOccurrences(of: #""value":7"#, with: #""value":8"#).utf8)
        #expect(tampered != payload)
        #expect(throws: FleetMessageError.badSignature(node)) {
            _ = try SignedDocument.open(tampered, as: Sample.self, context: "test/1", signerType: .server) { $0.node }
        }
        #expect(throws: FleetMessageError.badSignature(node)) {
            _ = try SignedDocument.open(payload, as: Sample.self, context: "other/1", signerType: .server) { $0.node }
        }
        // Naming another node's key does not help: the signature is checked under the named key.
        let other = NKey.encodePublicKey(Ed25519KeyPair().publicKey, type: .server)
        let forged = SignedDocument.seal(Sample(node: other, value: 7), context: "test/1", key: key)
        #expect(throws: FleetMessageError.badSignature(other)) {
            _ = try SignedDocument.open(forged, as: Sample.self, context: "test/1", signerType: .server) { $0.node }
        }
        // A user key cannot sign what a node must.
        let user = NKey.encodePublicKey(key.publicKey, type: .user)
        let asUser = SignedDocument.seal(Sample(node: user, value: 1), context: "test/1", key: key)
        #expect(throws: FleetMessageError.self) {
            _ = try SignedDocument.open(asUser, as: Sample.self, context: "test/1", signerType: .server) { $0.node }
        }
    }

    @Test func refusesMalformedInputWithoutTrapping() {
        let inputs: [[UInt8]] = [[], Array("{}".utf8), Array("not json at all, but long enough to be cut somewhere in the middle of it ..................................".utf8),
                                 Array(repeating: UInt8(ascii: "{"), count: 200), Array(repeating: 0xff, count: 70_000)]
        for input in inputs {
            #expect(throws: FleetMessageError.self) {
                _ = try SignedDocument.open(input, as: Sample.self, context: "test/1", signerType: .server) { $0.node }
            }
        }
    }
}

@Suite struct ClusterCommandTests {
    let admin = Identity()
    let node = NKey.encodePublicKey(Ed25519KeyPair().publicKey, type: .server)

    func command(_ action: ClusterCommand.Action, settings: [String: SettingValue]? = nil,
                 killswitch: ClusterCommand.SwitchChange? = nil, target: String = "all") -> ClusterCommand {
        ClusterCommand(admin: admin.userNKey, target: target, action: action, settings: settings, killswitch: killswitch,
                       nonce: ClusterCommand.makeNonce(), timestampMs: 1_800_000_000_000, version: 3)
    }

    @Test func opensWhatAnAdminSigned() throws {
        let sent = command(.settings, settings: ["max_connections": .integer(10), "log_level": .text("debug")], target: node)
        let opened = try ClusterCommand.open(sent.sealed(by: admin))
        #expect(opened == sent)
    }

    @Test func refusesSettingsByName() {
        #expect(RuntimeSetting.problem(name: "max_connections", value: .integer(5)) == nil)
        #expect(RuntimeSetting.problem(name: "beat_interval", value: .number(0.5)) == nil)
        #expect(RuntimeSetting.problem(name: "listen", value: .text("0.0.0.0:1"))?.contains("cannot change while the node runs") == true)
        #expect(RuntimeSetting.problem(name: "frobnicate", value: .integer(1))?.contains("is not a setting") == true)
        #expect(RuntimeSetting.problem(name: "max_connections", value: .integer(-1))?.contains("max_connections") == true)
        #expect(RuntimeSetting.problem(name: "max_connections", value: .text("x"))?.contains("integer") == true)
        #expect(RuntimeSetting.problem(name: "log_level", value: .text("loud"))?.contains("log_level") == true)
        #expect(RuntimeSetting.problem(name: "beat_interval", value: .number(.infinity)) != nil)
        let bad = command(.settings, settings: ["data_dir": .text("/tmp")])
        #expect(throws: FleetMessageError.invalid("data_dir cannot change while the node runs: change it in the node's configuration and restart it")) {
            _ = try ClusterCommand.open(bad.sealed(by: admin))
        }
    }

    @Test func refusesMalformedCommands() {
        var noNonce = command(.drain)
        noNonce.nonce = "short"
        #expect(noNonce.problem?.contains("nonce") == true)
        var badTarget = command(.drain)
        badTarget.target = admin.userNKey
        #expect(badTarget.problem?.contains("target") == true)
        #expect(command(.killswitch).problem != nil)
        #expect(command(.drain, settings: ["max_payload": .integer(1)]).problem != nil)
        var zero = command(.drain)
        zero.version = 0
        #expect(zero.problem != nil)
        // A version far above the command's time would lock the target out for good.
        var huge = command(.drain)
        huge.version = .max
        #expect(huge.problem?.contains("version") == true)
    }

    @Test func windowIsChecked() {
        let sent = command(.drain)
        #expect(sent.isFresh(nowMs: sent.timestampMs + 59_000))
        #expect(!sent.isFresh(nowMs: sent.timestampMs + 61_000))
        #expect(!sent.isFresh(nowMs: sent.timestampMs - 61_000))
        #expect(!sent.isFresh(nowMs: .min))
    }
}

@Suite struct AgentHeartbeatTests {
    static let valid = #"{"node_id":"550e8400-e29b-41d4-a716-446655440000","hostname":"vault-1","os_profile":"ArchVault","cloudflare_ok":true,"services_ok":false,"vaultmesh_root":"/var/lib/vaultmesh","timestamp":"2026-12-01T10:00:00Z"}"#

    func body(replacing key: String, with value: String?) -> [UInt8] {
        var object = try! JSONSerialization.jsonObject(with: Data(Self.valid.utf8)) as! [String: Any]
        if let value { object[key] = try! JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed) } else { object[key] = nil }
        return [UInt8](try! JSONSerialization.data(withJSONObject: object))
    }

    @Test func acceptsTheContractsExample() throws {
        let heartbeat = try AgentHeartbeat.parse(Array(Self.valid.utf8))
        #expect(heartbeat.nodeID == "550e8400-e29b-41d4-a716-446655440000")
        #expect(heartbeat.cloudflareOK && !heartbeat.servicesOK)
        #expect(try AgentHeartbeat.parse(body(replacing: "timestamp", with: #""2026-12-01T10:00:00.123+02:00""#)).timestamp.hasSuffix("+02:00"))
    }

    @Test func namesTheFieldThatIsWrong() {
        let cases: [(String, String?, String)] = [
            ("node_id", nil, "node_id is missing"),
            ("hostname", "5", "hostname must be a string"),
            ("cloudflare_ok", "1", "cloudflare_ok must be a boolean"),
            ("cloudflare_ok", #""true""#, "cloudflare_ok must be a boolean"),
            ("services_ok", nil, "services_ok is missing"),
            ("node_id", #""550e8400-e29b-11d4-a716-446655440000""#, "node_id must be a UUID v4"),
            ("node_id", #""not-a-uuid""#, "node_id must be a UUID v4"),
            ("timestamp", #""yesterday""#, "timestamp must be RFC 3339"),
            ("timestamp", #""2026-12-01 10:00:00""#, "timestamp must be RFC 3339"),
            ("vaultmesh_root", "null", "vaultmesh_root must be a string"),
            ("hostname", #""a\u0000b""#, "hostname must not hold control characters"),
        ]
        for (key, value, expected) in cases {
            do {
                _ = try AgentHeartbeat.parse(body(replacing: key, with: value))
                Issue.record("\(key)=\(value ?? "missing") was accepted")
            } catch {
                #expect("\(error)".hasPrefix(expected), "\(key): \(error)")
            }
        }
        #expect(throws: FleetMessageError.invalid("the body must be a JSON object")) { _ = try AgentHeartbeat.parse(Array("[1]".utf8)) }
        #expect(throws: FleetMessageError.invalid("the body must be a JSON object")) {
            _ = try AgentHeartbeat.parse(Array(repeating: UInt8(ascii: "["), count: 5000))
        }
        #expect(throws: FleetMessageError.self) { _ = try AgentHeartbeat.parse(Array(repeating: UInt8(ascii: " "), count: 9000)) }
    }
}

@Suite struct FleetViewTests {
    func beat(_ name: String, digest: String = "d1", ageMs: Int64 = 1000, status: NodeBeat.Status = .serving, now: Int64) -> NodeBeat {
        NodeBeat(node: "N" + name, name: name, version: "1", started: "", uptimeSeconds: 1, pid: 1, status: status, connections: 0,
                 routes: 2, peers: [], rooms: 0, log: .init(operations: 1, digest: digest, heads: []), rssBytes: 0, cpuSeconds: 0,
                 cpuPercent: 0, slowConsumers: 0, clockOffsetMs: 0, clockOk: true, intervalMs: 10_000, timestamp: "",
                 timestampMs: now - ageMs, sequence: 1, controlVersions: [:], killswitches: [], agents: 0, clientURL: nil, controlURL: nil)
    }

    @Test func staleDrainingAndAttention() {
        let now: Int64 = 1_800_000_000_000
        var since: [String: Int64] = [:]
        let beats = [beat("a", now: now), beat("b", ageMs: 31_000, now: now), beat("c", status: .draining, now: now),
                     beat("d", digest: "other", now: now)]
        FleetView.trackDisagreement(&since, beats: beats, nowMs: now - 40_000)
        #expect(since["Nd"] != nil && since["Na"] == nil)
        let view = FleetView.build(beats: beats, agents: [], nowMs: now, disagreeingSince: since, observer: "")
        #expect(view.nodes.count == 4)
        guard view.nodes.count == 4 else { return }
        #expect(view.nodes.map(\.status) == [.healthy, .stale, .draining, .attention])
        #expect(view.nodes[3].log == "disagrees")
        #expect(view.counts["healthy"] == 1 && view.counts["stale"] == 1 && view.counts["nodes"] == 4)
        // A short disagreement is not yet attention.
        var fresh: [String: Int64] = [:]
        FleetView.trackDisagreement(&fresh, beats: beats, nowMs: now)
        #expect(FleetView.build(beats: beats, agents: [], nowMs: now, disagreeingSince: fresh, observer: "").nodes[3].status == .healthy)
    }
}
