// The SDK suite runs in either format of the client protocol: JSON (the
// default) or Protobuf (`HERALD_SDK_PROTOCOL=protobuf`), with centrifuge-js's
// Protobuf build. Tests are written once, with JSON values: in Protobuf mode
// every payload a test hands the SDK is sent as its JSON text in bytes, and
// every payload the SDK hands back (bytes) is read as JSON again, so the
// same assertions judge both formats.

import { fileURLToPath } from 'node:url';

import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import Long from 'long';
import protobuf from 'protobufjs';
import { Centrifuge as ProtobufCentrifuge, Subscription } from 'centrifuge/build/protobuf';

export const PROTOCOL = process.env.HERALD_SDK_PROTOCOL === 'protobuf' ? 'protobuf' : 'json';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A test's JSON value as the bytes the Protobuf SDK sends. */
function toWire(value) {
  if (value === undefined || value instanceof Uint8Array) return value;
  return encoder.encode(JSON.stringify(value));
}

/**
 * The SDK's values with every payload (bytes) read as JSON and 64-bit
 * numbers as numbers; empty payloads disappear, as the JSON format omits
 * them. Decoded Protobuf messages become plain objects.
 */
export function fromWire(value) {
  if (value instanceof Uint8Array) {
    return value.length === 0 ? undefined : JSON.parse(decoder.decode(value));
  }
  if (Array.isArray(value)) return value.map(fromWire);
  if (!value || typeof value !== 'object' || value instanceof Error) return value;
  if (Long.isLong(value)) return value.toNumber();
  const out = {};
  for (const [k, v] of Object.entries(value)) {
    const converted = fromWire(v);
    // The JSON format leaves out empty tags too.
    const emptyTags = k === 'tags' && Object.keys(converted ?? {}).length === 0;
    if (converted !== undefined && !emptyTags) out[k] = converted;
  }
  return out;
}

const proto = new protobuf.Root().loadSync(
  fileURLToPath(new URL('../../crates/herald-protocol/proto/client.proto', import.meta.url)),
  { keepCase: true },
);
const Command = proto.lookupType('centrifugal.centrifuge.protocol.Command');
const Reply = proto.lookupType('centrifugal.centrifuge.protocol.Reply');

/**
 * A frame as the JSON format's lines: text frames split at newlines; a
 * Protobuf frame's length-prefixed messages (commands when `sent`, replies
 * otherwise) each written as the JSON format would write it.
 */
export function frameLines(data, sent) {
  if (typeof data === 'string') return data.split('\n').filter((l) => l.length > 0);
  const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
  if (PROTOCOL === 'json') return bytes.toString('utf8').split('\n').filter((l) => l.length > 0);
  const type = sent ? Command : Reply;
  const reader = protobuf.Reader.create(bytes);
  const lines = [];
  while (reader.pos < reader.len) {
    const message = type.decodeDelimited(reader);
    lines.push(JSON.stringify(fromWire(type.toObject(message, { longs: Number }))));
  }
  return lines;
}

/** Wraps `proto[name]` so that argument `index` goes out as bytes and the result comes back as JSON. */
function wrapMethod(proto, name, index) {
  const original = proto[name];
  proto[name] = function wrapped(...args) {
    if (index !== null && index < args.length) args[index] = toWire(args[index]);
    const result = original.apply(this, args);
    return result && typeof result.then === 'function' ? result.then(fromWire, (e) => Promise.reject(fromWire(e))) : result;
  };
}

let patched = false;

function patchProtobufSdk() {
  if (patched) return;
  patched = true;
  for (const proto of [ProtobufCentrifuge.prototype, Subscription.prototype]) {
    const emit = proto.emit;
    proto.emit = function emitJson(type, ...args) {
      return emit.call(this, type, ...args.map(fromWire));
    };
  }
  const c = ProtobufCentrifuge.prototype;
  wrapMethod(c, 'publish', 1);
  wrapMethod(c, 'rpc', 1);
  wrapMethod(c, 'send', 0);
  wrapMethod(c, 'history', null);
  wrapMethod(c, 'presence', null);
  wrapMethod(c, 'presenceStats', null);
  const s = Subscription.prototype;
  wrapMethod(s, 'publish', 0);
  wrapMethod(s, 'history', null);
  wrapMethod(s, 'presence', null);
  wrapMethod(s, 'presenceStats', null);
  const newSubscription = c.newSubscription;
  c.newSubscription = function newSubscriptionJson(channel, options = {}) {
    return newSubscription.call(this, channel, withWireData(options));
  };
}

/** Options whose `data` (and what `getData` resolves to) go out as bytes. */
function withWireData(options) {
  const out = { ...options };
  if ('data' in out) out.data = toWire(out.data);
  if (typeof out.getData === 'function') {
    const getData = out.getData;
    out.getData = async (...args) => toWire(await getData(...args));
  }
  return out;
}

/** An SDK client in the suite's format. */
export function createCentrifuge(url, options) {
  if (PROTOCOL === 'json') return new JsonCentrifuge(url, options);
  patchProtobufSdk();
  return new ProtobufCentrifuge(url, { ...withWireData(options), protocol: 'protobuf' });
}
