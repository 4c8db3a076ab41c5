import Foundation
import Testing
import UnibusConfig
import UnibusFleet

@Suite("Configuration layers")
struct ConfigurationTests {
    let keys: [ConfigurationKey] = [
        .init("listen", .text, reload: .restart),
        .init("max_payload", .integer, reload: .live),
        .init("ping_interval", .number, reload: .restart),
        .init("allow_plaintext", .boolean, reload: .restart),
        .init("routes", .list, reload: .restart),
        .init("tls_key", .path(secret: true), reload: .live),
        .init("name", .text, reload: .restart),
    ]

    func file(_ text: String, mode: mode_t = 0o600) throws -> String {
        let path = NSTemporaryDirectory() + "unibus-config-\(UUID().uuidString).json"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: Int(mode)]))
        return path
    }

    func problem(_ files: [String], _ environment: [String: String] = [:]) -> String? {
        do {
            _ = try ConfigurationLayers.resolve(keys: keys, files: files, environment: environment)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func laterLayersWinAndListsAreReplacedWhole() throws {
        let system = try file(#"{"listen": "0.0.0.0:4222", "routes": ["tls://a:1", "tls://b:1"], "max_payload": 100}"#)
        let local = try file(#"{"max_payload": 200, "allow_plaintext": true}"#)
        let layers = try ConfigurationLayers.resolve(keys: keys, files: [system, local],
                                                     environment: ["UNIBUS_ROUTES": "tls://c:1", "UNIBUS_PING_INTERVAL": "2.5", "OTHER": "x"])
        #expect(layers.values["listen"]?.source == .file(system))
        #expect(layers.values["max_payload"] == ConfiguredValue(value: .scalar("200"), source: .file(local), reference: nil))
        #expect(layers.values["routes"]?.value == .list(["tls://c:1"]))
        #expect(layers.values["ping_interval"]?.source == .environment("UNIBUS_PING_INTERVAL"))
        // A flag given on the command line drops the layer's words for it.
        let words = layers.arguments(keys: keys, excluding: ["--max-payload"])
        #expect(words == ["--listen", "0.0.0.0:4222", "--ping-interval", "2.5", "--allow-plaintext", "--routes", "tls://c:1"])
    }

    @Test func typesAreStrict() throws {
        #expect(problem([try file(#"{"max_payload": true}"#)])?.contains(#"key "max_payload": expected a whole number"#) == true)
        #expect(problem([try file(#"{"allow_plaintext": 1}"#)])?.contains("expected true or false") == true)
        #expect(problem([try file(#"{"routes": "tls://a:1"}"#)])?.contains("expected an array of strings") == true)
        #expect(problem([try file(#"{"max_payload": 1.5}"#)])?.contains("expected a whole number") == true)
        #expect(problem([try file(#"[1, 2]"#)])?.contains("one JSON object") == true)
        #expect(problem([try file(#"{"max_payload": "#)])?.contains("not valid JSON") == true)
        #expect(problem([], ["UNIBUS_MAX_PAYLOAD": "12abc"])?.contains("environment UNIBUS_MAX_PAYLOAD") == true)
        #expect(problem([], ["UNIBUS_ALLOW_PLAINTEXT": "maybe"])?.contains("expected true or false") == true)
        #expect(problem([try file(#"{"name": "a\u0007b"}"#)])?.contains("control characters") == true)
    }

    @Test func unknownKeysAreNamedWithASuggestion() throws {
        let path = try file(#"{"max_paylod": 5}"#)
        #expect(problem([path]) == "\(path): unknown key \"max_paylod\"; did you mean \"max_payload\"? (keys are the `unibusd run` flags in snake_case; `unibusd config show` lists them)")
        #expect(problem(["/nonexistent/unibusd.json"])?.hasPrefix("/nonexistent/unibusd.json: cannot read") == true)
    }

    @Test func referencesResolveOrFailNamingThemselves() throws {
        let key = try file("PRIVATE", mode: 0o600)
        let layers = try ConfigurationLayers.resolve(keys: keys, files: [try file(#"{"tls_key": "file://\#(key)", "name": "env://NODE"}"#)],
                                                     environment: ["NODE": "alpha"])
        #expect(layers.values["tls_key"] == ConfiguredValue(value: .scalar(key), source: layers.values["tls_key"]?.source ?? .default, reference: "file://" + key))
        #expect(layers.values["name"]?.value == .scalar("alpha"))
        // A text value from a file is the file's contents (which must be private).
        let secretName = try file("from-a-file\n", mode: 0o600)
        let fromFile = try ConfigurationLayers.resolve(keys: keys, files: [], environment: ["UNIBUS_NAME": "file://" + secretName])
        #expect(fromFile.values["name"]?.value == .scalar("from-a-file"))

        let open = try file("PRIVATE", mode: 0o644)
        #expect(problem([try file(#"{"tls_key": "file://\#(open)"}"#)])?.contains("readable by group or others (mode 644); run `chmod 600") == true)
        #expect(problem([], ["UNIBUS_NAME": "file://" + open])?.contains("accessible to others") == true)
        #expect(problem([try file(#"{"name": "env://MISSING"}"#)])?.contains("env://MISSING cannot be resolved: the environment variable MISSING is not set") == true)
        #expect(problem([try file(#"{"name": "env://"}"#)])?.contains("not a valid reference") == true)
        #expect(problem([try file(#"{"tls_key": "file://relative"}"#)])?.contains("file:///absolute/path") == true)
        #expect(problem([try file(#"{"tls_key": "file:///no/such/key"}"#)])?.contains("no file at /no/such/key") == true)
        #expect(problem([try file(#"{"tls_key": "vault://kv/unibus#key"}"#)])?.contains("vault:// references are not supported") == true)
        // A URL where a URL belongs is a value, not a reference.
        let url = try ConfigurationLayers.resolve(keys: keys, files: [try file(#"{"routes": ["tls://a:1"], "listen": "0.0.0.0:1"}"#)], environment: [:])
        #expect(url.values["routes"]?.value == .list(["tls://a:1"]))
    }
}

@Suite("Runtime setting sources on the wire")
struct EffectiveSettingWireTests {
    @Test func configuredValuesKeepTheWireValuesEarlierClientsDecode() throws {
        let setting = EffectiveSetting(value: .integer(500), source: .flag, origin: "file /etc/unibus/unibusd.json")
        let text = String(decoding: try JSONEncoder().encode(setting), as: UTF8.self)
        #expect(text.contains(#""source":"flag""#))
        // A later release's source this build does not know reads as configured, not as a failed document.
        let later = try JSONDecoder().decode(EffectiveSetting.self, from: Data(#"{"value":7,"source":"vault"}"#.utf8))
        #expect(later.source == .flag && later.value == .integer(7))
    }
}
