// Load an edgekit bundle's Core ML model in an iOS 16+ / macOS 13+ app, feeding it by the names in
// the bundle's manifest.json (never by position). Copy the bundle's app files first:
//
//     edgekit export mobilenet_v2 --targets coreml --quant fp16 --out bundles/mobilenet_v2
//     edgekit bundle bundles/mobilenet_v2 --ios MyApp/Resources/edgekit
//
// Add MyApp/Resources/edgekit to the app target as a folder reference (blue folder): the
// .mlpackage then ships as it is and this code compiles it once on the device (MLModel.compileModel)
// and caches the compiled model. If you instead add the .mlpackage to the target directly, Xcode
// compiles it to <name>.mlmodelc at build time; `EdgekitCoreML.load` uses that when it finds it.
//
// Not built here: edgekit's machines have no Swift toolchain with Core ML (Apple platforms only).
// Foundation and Core ML only; no third-party package.

import CoreML
import Foundation

/// The parts of edgekit's manifest.json this file reads (format "edgekit-bundle", version 1).
struct EdgekitManifest: Decodable {
    struct Tensor: Decodable {
        let name: String
        let shape: [Int]
        let dtype: String   // numpy name: "float32", "int64", ...
    }
    struct Spec: Decodable {
        let name: String
        let inputs: [Tensor]
        let outputs: [Tensor]
        let labels: [String]?
    }
    struct Model: Decodable { let spec: Spec }
    struct Artifact: Decodable {
        struct Meta: Decodable { let package: String? }
        let target: String
        let precision: String
        let path: String    // "<name>.mlpackage/Manifest.json" for the coreml target
        let meta: Meta?
    }
    let format: String
    let format_version: Int
    let model: Model
    let artifacts: [Artifact]
}

enum EdgekitError: Error, CustomStringConvertible {
    case noCoreMLArtifact(String)
    case interfaceMismatch(String)
    case badInput(String)

    var description: String {
        switch self {
        case .noCoreMLArtifact(let s), .interfaceMismatch(let s), .badInput(let s): return s
        }
    }
}

final class EdgekitCoreML {
    let model: MLModel
    let spec: EdgekitManifest.Spec
    let precision: String

    private init(model: MLModel, spec: EdgekitManifest.Spec, precision: String) {
        self.model = model
        self.spec = spec
        self.precision = precision
    }

    /// Load the coreml artifact of the bundle copied into `folder` (the folder that holds
    /// manifest.json). `prefer`: precisions to try first, e.g. ["dynamic", "fp16", "fp32"].
    static func load(from folder: URL,
                     prefer: [String] = ["fp16", "dynamic", "fp32"],
                     computeUnits: MLComputeUnits = .all) async throws -> EdgekitCoreML {
        let data = try Data(contentsOf: folder.appendingPathComponent("manifest.json"))
        let manifest = try JSONDecoder().decode(EdgekitManifest.self, from: data)
        guard manifest.format == "edgekit-bundle", manifest.format_version == 1 else {
            throw EdgekitError.noCoreMLArtifact("manifest.json is not an edgekit bundle manifest of version 1")
        }
        let coreml = manifest.artifacts.filter { $0.target == "coreml" }
        let rank = { (a: EdgekitManifest.Artifact) in prefer.firstIndex(of: a.precision) ?? prefer.count }
        guard let artifact = coreml.min(by: { rank($0) < rank($1) }) else {
            throw EdgekitError.noCoreMLArtifact("the bundle has no coreml artifact; export with --targets coreml")
        }
        // The package folder: meta.package, else the artifact path without "/Manifest.json".
        let package = artifact.meta?.package
            ?? String(artifact.path.dropLast("/Manifest.json".count))
        let packageURL = folder.appendingPathComponent(package, isDirectory: true)

        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        let compiled = try await compiledModel(packageURL: packageURL)
        let model = try MLModel(contentsOf: compiled, configuration: config)
        let loaded = EdgekitCoreML(model: model, spec: manifest.model.spec, precision: artifact.precision)
        try loaded.checkInterface()
        return loaded
    }

    /// Xcode's build-time compiled model if the app has one, else compile the .mlpackage once and
    /// keep the result in Application Support (compiling takes seconds; do not repeat it per launch).
    private static func compiledModel(packageURL: URL) async throws -> URL {
        let stem = packageURL.deletingPathExtension().lastPathComponent
        if let bundled = Bundle.main.url(forResource: stem, withExtension: "mlmodelc") {
            return bundled
        }
        let fm = FileManager.default
        let cacheDir = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                  appropriateFor: nil, create: true)
            .appendingPathComponent("edgekit", isDirectory: true)
        try fm.createDirectory(at: cacheDir, withIntermediateDirectories: true)
        let cached = cacheDir.appendingPathComponent("\(stem).mlmodelc", isDirectory: true)
        let stamp = cacheDir.appendingPathComponent("\(stem).source-date")
        let sourceDate = (try? fm.attributesOfItem(atPath: packageURL.path))?[.modificationDate] as? Date
        let cachedDate = (try? Data(contentsOf: stamp)).flatMap { String(data: $0, encoding: .utf8) }
        if fm.fileExists(atPath: cached.path), let d = sourceDate, cachedDate == "\(d.timeIntervalSince1970)" {
            return cached
        }
        let temp = try await MLModel.compileModel(at: packageURL)   // iOS 16 / macOS 13
        if fm.fileExists(atPath: cached.path) { try fm.removeItem(at: cached) }
        try fm.moveItem(at: temp, to: cached)
        if let d = sourceDate { try Data("\(d.timeIntervalSince1970)".utf8).write(to: stamp) }
        return cached
    }

    /// The model's inputs and outputs are the ones the manifest names (edgekit checked this
    /// statically at export; a mismatch here means the files do not come from one bundle).
    private func checkInterface() throws {
        let desc = model.modelDescription
        for t in spec.inputs where desc.inputDescriptionsByName[t.name] == nil {
            throw EdgekitError.interfaceMismatch("the Core ML model has no input \(t.name); it has \(Array(desc.inputDescriptionsByName.keys))")
        }
        for t in spec.outputs where desc.outputDescriptionsByName[t.name] == nil {
            throw EdgekitError.interfaceMismatch("the Core ML model has no output \(t.name); it has \(Array(desc.outputDescriptionsByName.keys))")
        }
    }

    /// One prediction: `inputs[name]` holds the values of that input, flattened in the manifest's
    /// shape and layout (NCHW for edgekit's image models, preprocessed as model.spec.preprocess says).
    /// Token ids (int64 in the manifest) are fed as int32: Core ML has no int64 arrays.
    /// Returns each output of the manifest, by name, as Float values.
    func predict(_ inputs: [String: [Float]]) throws -> [String: [Float]] {
        var features: [String: MLFeatureValue] = [:]
        for t in spec.inputs {
            guard let values = inputs[t.name] else { throw EdgekitError.badInput("missing input \(t.name)") }
            let count = t.shape.reduce(1, *)
            guard values.count == count else {
                throw EdgekitError.badInput("input \(t.name) has \(values.count) values, the model takes \(t.shape) = \(count)")
            }
            let isInt = t.dtype.hasPrefix("int")
            let array = try MLMultiArray(shape: t.shape.map { NSNumber(value: $0) },
                                         dataType: isInt ? .int32 : .float32)
            if isInt {
                let p = array.dataPointer.bindMemory(to: Int32.self, capacity: count)
                for i in 0..<count { p[i] = Int32(values[i]) }
            } else {
                let p = array.dataPointer.bindMemory(to: Float.self, capacity: count)
                for i in 0..<count { p[i] = values[i] }
            }
            features[t.name] = MLFeatureValue(multiArray: array)
        }
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        var outputs: [String: [Float]] = [:]
        for t in spec.outputs {
            guard let array = result.featureValue(for: t.name)?.multiArrayValue else {
                throw EdgekitError.interfaceMismatch("the prediction has no output \(t.name)")
            }
            // edgekit declares float32 outputs; read through NSNumber so any stride/dtype works.
            outputs[t.name] = (0..<array.count).map { array[$0].floatValue }
        }
        return outputs
    }
}

// Usage (e.g. in a SwiftUI .task):
//
//     let folder = Bundle.main.resourceURL!.appendingPathComponent("edgekit")
//     let runner = try await EdgekitCoreML.load(from: folder)
//     let logits = try runner.predict(["image": pixels])["logits"]!   // names from manifest.json
//     let top = logits.indices.max { logits[$0] < logits[$1] }!
//     print(runner.spec.labels?[top] ?? "class \(top)")
