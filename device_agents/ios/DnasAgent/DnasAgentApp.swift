// The iOS companion app: the service URL and the device's agent token (typed, or from the registration link
// `dnas-agent://register?server=...&token=...` that `dnas device register` users and the conformance suite's
// --phone mode print as a QR code), a measurement option, start and stop.
import OnnxRuntimeBindings
import SwiftUI

@main
struct DnasAgentApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}

@MainActor  // View is main-actor isolated from the iOS 18 SDK on; said here for older SDKs
struct ContentView: View {
    @StateObject private var agent = AgentLoop()
    @Environment(\.scenePhase) private var scenePhase
    @AppStorage("server") private var server = ""
    @AppStorage("token") private var token = ""  // kept on the device only
    @AppStorage("coreml") private var coreML = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Service") {
                    TextField("Server URL", text: $server)
                        .keyboardType(.URL).textInputAutocapitalization(.never).autocorrectionDisabled()
                    SecureField("Agent token", text: $token)
                }
                Section("Measurement") {
                    Toggle("CoreML execution provider", isOn: $coreML)
                        .disabled(agent.running || !ORTIsCoreMLExecutionProviderAvailable())
                    Text("Recorded in every result's context. Keep the app in the foreground and the phone on power.")
                        .font(.caption)
                }
                Section("Agent") {
                    LabeledContent("Status", value: agent.status)
                    LabeledContent("Done", value: "\(agent.done)")
                    LabeledContent("Failed", value: "\(agent.failed)")
                    if agent.savedBatches > 0 { LabeledContent("Saved batches to post", value: "\(agent.savedBatches)") }
                    if !agent.lastBatch.isEmpty { Text(agent.lastBatch).font(.caption.monospaced()) }
                    if agent.running {
                        Button("Stop after this batch") { agent.stopAfterThisBatch() }.disabled(agent.stopAfterBatch)
                        Button("Stop now (give the batch back)", role: .destructive) { agent.stopNow() }
                    } else {
                        Button("Start") {
                            do {
                                let url = try ServerURL(server)
                                guard !token.isEmpty else { agent.status = "no agent token"; return }
                                agent.start(server: url, token: token, options: MeasureOptions(coreML: coreML))
                            } catch {
                                agent.status = error.localizedDescription
                            }
                        }
                    }
                }
            }
            .navigationTitle("dnas agent")
        }
        .task {  // at launch: post the batches an earlier run saved and could not post (it may have been killed)
            if let url = try? ServerURL(server), !token.isEmpty { agent.deliverSaved(server: url, token: token) }
        }
        .onOpenURL { url in  // the registration link: fill in the form; the person taps Start
            guard url.scheme == "dnas-agent", url.host == "register",
                  let items = URLComponents(url: url, resolvingAgainstBaseURL: false)?.queryItems else { return }
            if let s = items.first(where: { $0.name == "server" })?.value { server = s }
            if let t = items.first(where: { $0.name == "token" })?.value { token = t }
        }
        .onChange(of: scenePhase) { phase in
            switch phase {
            case .background: agent.enteredBackground()
            case .active: agent.enteredForeground()
            default: break
            }
        }
    }
}
