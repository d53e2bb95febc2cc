// The iOS companion app: enter the service URL and the device's agent token, start measuring.
import SwiftUI
import onnxruntime_objc

func ORTVersionString() -> String { ORTVersion() ?? "unknown" }

@main
struct DnasAgentApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}

struct ContentView: View {
    @StateObject private var agent = AgentLoop()
    @AppStorage("server") private var server = ""
    @AppStorage("token") private var token = ""  // kept on the device only

    var body: some View {
        NavigationStack {
            Form {
                Section("Service") {
                    TextField("Server URL", text: $server)
                        .keyboardType(.URL).textInputAutocapitalization(.never).autocorrectionDisabled()
                    SecureField("Agent token", text: $token)
                }
                Section("Agent") {
                    LabeledContent("Status", value: agent.status)
                    LabeledContent("Done", value: "\(agent.done)")
                    LabeledContent("Failed", value: "\(agent.failed)")
                    if !agent.lastOp.isEmpty { Text(agent.lastOp).font(.caption.monospaced()) }
                    Button(agent.running ? "Stop after this job" : "Start") {
                        if agent.running { agent.stop() }
                        else if let url = URL(string: server), !token.isEmpty { agent.start(server: url, token: token) }
                    }
                }
            }
            .navigationTitle("dnas agent")
        }
    }
}
