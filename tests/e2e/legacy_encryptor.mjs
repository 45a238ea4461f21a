// The original design's SecretEncryptor, in its TypeScript idiom on Node.js's own crypto: the key is SHA-256
// of the master key string, AES-256-GCM with a random IV, stored as `iv:authTag:ciphertext` in hex.
//
//   node legacy_encryptor.mjs encrypt   stdin: [{masterKey, text, ivBytes, authTagLength?}]  stdout: [stored]
//   node legacy_encryptor.mjs decrypt   stdin: [{masterKey, stored}]                         stdout: [text]
//
// A failure names the item by its index only: the input holds the values and keys of a test.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

function keyOf(masterKey) {
  return createHash('sha256').update(masterKey).digest();
}

function encrypt({ masterKey, text, ivBytes, authTagLength }) {
  const iv = randomBytes(ivBytes);
  const options = authTagLength === undefined ? undefined : { authTagLength };
  const cipher = createCipheriv('aes-256-gcm', keyOf(masterKey), iv, options);
  let encrypted = cipher.update(text, 'utf8', 'hex');
  encrypted += cipher.final('hex');
  const authTag = cipher.getAuthTag().toString('hex');
  return `${iv.toString('hex')}:${authTag}:${encrypted}`;
}

function decrypt({ masterKey, stored }) {
  const [ivHex, authTagHex, encrypted] = stored.split(':');
  const decipher = createDecipheriv('aes-256-gcm', keyOf(masterKey), Buffer.from(ivHex, 'hex'));
  decipher.setAuthTag(Buffer.from(authTagHex, 'hex'));
  let text = decipher.update(encrypted, 'hex', 'utf8');
  text += decipher.final('utf8');
  return text;
}

const modes = { encrypt, decrypt };
const mode = modes[process.argv[2]];
if (mode === undefined) {
  process.stderr.write('usage: legacy_encryptor.mjs encrypt|decrypt < items.json\n');
  process.exit(2);
}
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  input += chunk;
});
process.stdin.on('end', () => {
  const results = [];
  for (const [index, item] of JSON.parse(input).entries()) {
    try {
      results.push(mode(item));
    } catch (error) {
      process.stderr.write(`item ${index}: ${error.code ?? error.name}\n`);
      process.exit(1);
    }
  }
  process.stdout.write(JSON.stringify(results));
});
