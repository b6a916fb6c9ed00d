#!/usr/bin/env node
// A small rnnserve.v1 client in Node.js: loads the .proto, opens a session over Stream, streams
// each input as one message and prints every reply as one JSON document on stdout.
//
// Usage: node client.js --target 127.0.0.1:50051 --model tiny-lstm-lm \
//          --inputs '["hello", [1, 2, 3]]' [--client-id alice] [--proto path/to/rnnserve.proto]
// Each input is text (a string) or token ids (an array of integers).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const args = {
    target: '127.0.0.1:50051',
    model: '',
    version: 0,
    inputs: '[]',
    clientId: '',
    proto: path.resolve(__dirname, '../../../protos/rnnserve/v1/rnnserve.proto'),
    timeout: 30,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in args)) throw new Error(`unknown option ${argv[i]}`);
    args[key] = argv[i + 1];
  }
  args.inputs = JSON.parse(args.inputs);
  args.version = Number(args.version);
  args.timeout = Number(args.timeout);
  return args;
}

function loadService(protoPath) {
  const definition = protoLoader.loadSync(protoPath, {
    keepCase: true,
    longs: String, // int64/uint64 arrive as decimal strings: no precision lost
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [path.resolve(path.dirname(protoPath), '../..')],
  });
  return grpc.loadPackageDefinition(definition).rnnserve.v1.InferenceService;
}

// Tensor.raw_data: little-endian, row-major bytes (float32 here).
function decodeTensor(tensor) {
  const shape = tensor.shape.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  if (tensor.dtype !== 'DATA_TYPE_FLOAT32') throw new Error(`unexpected dtype ${tensor.dtype}`);
  const values = [];
  for (let i = 0; i < count; i += 1) values.push(tensor.raw_data.readFloatLE(i * 4));
  return { shape, values };
}

function decodeResult(result) {
  return {
    steps: Number(result.steps),
    step_count: Number(result.step_count),
    outputs: result.outputs.map((output) => ({
      name: output.name,
      meaning: output.meaning,
      tensor: output.tensor ? decodeTensor(output.tensor) : null,
      argmax: output.argmax.map(Number),
      labels: output.labels,
    })),
  };
}

function stepMessage(input, index) {
  const step = typeof input === 'string' ? { text: input } : { tokens: { ids: input } };
  return {
    request_id: String(index),
    step,
    output: { steps: 'OUTPUT_STEPS_ALL', format: 'OUTPUT_FORMAT_RAW' },
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const InferenceService = loadService(args.proto);
  const client = new InferenceService(args.target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (args.clientId) metadata.set('x-client-id', args.clientId);
  const deadline = new Date(Date.now() + args.timeout * 1000);
  const call = client.Stream(metadata, { deadline });

  const report = { session: null, replies: [], closed: null };
  const done = new Promise((resolve, reject) => {
    call.on('data', (response) => {
      if (response.kind === 'session' && report.session === null) {
        report.session = {
          session_id: response.session.session_id,
          model: response.session.model,
          version: Number(response.session.version),
        };
        // The session is open: send every input, then close the session.
        args.inputs.forEach((input, index) => call.write(stepMessage(input, index)));
        call.write({ request_id: 'close', control: 'CONTROL_ACTION_CLOSE' });
      } else if (response.kind === 'session') {
        report.closed = { step_count: Number(response.session.step_count) };
      } else if (response.kind === 'result') {
        report.replies.push({ request_id: response.request_id, result: decodeResult(response.result) });
      } else if (response.kind === 'error') {
        report.replies.push({
          request_id: response.request_id,
          error: {
            code: response.error.code,
            code_name: response.error.code_name,
            message: response.error.message,
            field: response.error.field,
          },
        });
        if (report.session === null) call.end(); // the open itself failed
      }
    });
    call.on('error', reject);
    call.on('end', resolve);
  });
  call.write({ request_id: 'open', open: { model: { name: args.model, version: args.version } } });
  await done;
  call.end();
  client.close();
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((error) => {
  process.stderr.write(`error: ${error.code !== undefined ? `${error.code} ` : ''}${error.message}\n`);
  process.exit(1);
});
