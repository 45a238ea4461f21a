// The TypeScript SDK's Client against mcp-secrets, as most MCP clients run it; prints a JSON report.
//
// Run by test_typescript_client.py from a directory where `@modelcontextprotocol/sdk` is installed. Its
// settings come from the environment, never the arguments: TS_TRANSPORT (stdio, streamable-http or sse),
// TS_URL and TS_TOKEN over HTTP, TS_COMMAND and TS_SERVER_ENV (JSON) on stdio, TS_VALUE (the value to
// store and to type into the entry page), TS_PAGED_USER (a user holding more than one page of keys) and,
// with the gateway in front of the fixture downstream server, TS_NUMBER (a secret of digits for it).
// The report never holds TS_VALUE, TS_TOKEN or the entry link: the test looks for them in all it printed.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  ElicitRequestSchema,
  ElicitationCompleteNotificationSchema,
  LATEST_PROTOCOL_VERSION,
  ToolListChangedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { AjvJsonSchemaValidator } from '@modelcontextprotocol/sdk/validation/ajv';

const env = process.env;
const kind = env.TS_TRANSPORT;
const value = env.TS_VALUE;

function transportFor(token, user) {
  if (kind === 'stdio') {
    const serverEnv = { ...JSON.parse(env.TS_SERVER_ENV), MCP_SECRETS_USER: user };
    return new StdioClientTransport({ command: env.TS_COMMAND, args: ['serve'], env: serverEnv, stderr: 'inherit' });
  }
  const headers = { Authorization: `Bearer ${token}` };
  if (kind === 'sse') {
    // The SSE stream's GET takes its headers from eventSourceInit, the POSTs from requestInit.
    const eventSourceInit = { fetch: (url, init) => fetch(url, { ...init, headers: { ...init?.headers, ...headers } }) };
    return new SSEClientTransport(new URL(env.TS_URL), { requestInit: { headers }, eventSourceInit });
  }
  return new StreamableHTTPClientTransport(new URL(env.TS_URL), { requestInit: { headers } });
}

// A client as the SDK makes one, which also notes the protocol version the server answered.
async function connected(capabilities, token = env.TS_TOKEN, user = 'alice') {
  const client = new Client({ name: 'typescript-client-test', version: '1.0.0' }, { capabilities });
  const transport = transportFor(token, user);
  const answered = {};
  const start = transport.start.bind(transport);
  transport.start = async () => {
    const receive = transport.onmessage;
    transport.onmessage = (message, extra) => {
      if (message.result?.protocolVersion) answered.version = message.result.protocolVersion;
      receive?.(message, extra);
    };
    return start();
  };
  await client.connect(transport);
  return { client, transport, answered };
}

// A call as a client author makes it: the SDK checks structured content against the listed output schema
// and throws when it does not fit; that is reported, not raised.
async function call(client, name, args, options) {
  try {
    const result = await client.callTool({ name, arguments: args }, undefined, options);
    return { isError: result.isError ?? false, structured: result.structuredContent ?? null, text: result.content.map((block) => block.text ?? '').join('\n') };
  } catch (error) {
    return { threw: `${error.constructor.name} ${error.code ?? ''}: ${error.message}` };
  }
}

// What a user does in a browser: open the link, type the value, submit. The status of the POST.
async function fillIn(url) {
  const page = await fetch(url);
  const cookie = page.headers.getSetCookie().map((line) => line.split(';')[0]).join('; ');
  const csrf = (await page.text()).match(/name="csrf" value="([^"]+)"/)[1];
  const form = new URLSearchParams({ csrf, value });
  const posted = await fetch(url, { method: 'POST', body: form, headers: { cookie } });
  return posted.status;
}

const report = { offered: LATEST_PROTOCOL_VERSION };
const { client, transport, answered } = await connected({ elicitation: { url: {} } });
report.answered = answered.version;

const { tools } = await client.listTools();
const validator = new AjvJsonSchemaValidator();
report.schemas = {};
for (const tool of tools) {
  for (const which of ['inputSchema', 'outputSchema']) {
    try {
      validator.getValidator(tool[which]);
      report.schemas[`${tool.name}.${which}`] = 'compiled';
    } catch (error) {
      report.schemas[`${tool.name}.${which}`] = `refused: ${error.message}`;
    }
  }
}

report.calls = {
  set: await call(client, 'set_secret', { server: 'github', key: 'GITHUB_TOKEN', value }),
  replace: await call(client, 'set_secret', { server: 'github', key: 'GITHUB_TOKEN', value: `${value}-2` }),
  keys: await call(client, 'list_secret_keys', { server: 'github' }),
  events: await call(client, 'list_secret_events', { limit: 2 }),
  delete: await call(client, 'delete_secret', { server: 'github', key: 'GITHUB_TOKEN' }),
  deleteAgain: await call(client, 'delete_secret', { server: 'github', key: 'GITHUB_TOKEN' }),
  badName: await call(client, 'set_secret', { server: 'git hub', key: 'K', value }),
  noValue: await call(client, 'set_secret', { server: 'github', key: 'K' }),
  badLimit: await call(client, 'list_secret_events', { limit: '5' }),
  badCursor: await call(client, 'list_secret_keys', { cursor: 'no-slash' }),
};

// request_secret: URL-mode elicitation where the server serves the entry page, a terminal hint on stdio.
const asked = [];
const completed = [];
const filled = [];
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  asked.push(request.params);
  // The user opens the link and submits the page once the client said it opens it.
  setTimeout(() => fillIn(request.params.url).then((status) => filled.push(status)), 200);
  return { action: 'accept' };
});
client.setNotificationHandler(ElicitationCompleteNotificationSchema, (notification) => {
  completed.push(notification.params.elicitationId);
});
const progress = [];
const requested = await call(client, 'request_secret', { server: 'github', key: 'ENTERED' }, {
  onprogress: (reported) => progress.push(reported.progress),
});
report.request = {
  result: requested,
  asked: asked.map((params) => ({ mode: params.mode, elicitationId: params.elicitationId, sameOrigin: kind !== 'stdio' && new URL(params.url).origin === new URL(env.TS_URL).origin })),
  completed: completed.map((id) => id === asked[0]?.elicitationId),
  filled,
  progressed: progress.length > 0,
  stored: (await call(client, 'list_secret_keys', { server: 'github' })).structured?.keys.map((key) => key.key),
};

// A client that declares elicitation without URL mode is given the link in the result.
if (kind !== 'stdio') {
  const { client: formOnly } = await connected({ elicitation: {} });
  const result = await call(formOnly, 'request_secret', { server: 'github', key: 'LINKED' });
  report.formOnly = { isError: result.isError, status: result.structured?.status, hasUrl: typeof result.structured?.url === 'string' };
  await formOnly.close();
}

// Paging, the cursor round-tripped as the client got it.
const paged = await connected({}, env.TS_PAGED_TOKEN, env.TS_PAGED_USER);
const pages = [];
let cursor;
do {
  const page = await call(paged.client, 'list_secret_keys', cursor === undefined ? {} : { cursor });
  if (!page.structured) {
    pages.push(page);
    break;
  }
  pages.push(page.structured.keys.length);
  report.listed = [...(report.listed ?? []), ...page.structured.keys.map((key) => `${key.server}/${key.key}`)];
  cursor = page.structured.next_cursor;
} while (cursor !== undefined);
report.pages = pages;
await paged.client.close();

// Through the gateway (HTTP only): told of the tools a stored secret brings, and a result whose structured
// content redaction took out of its output schema read without a throw.
if (env.TS_NUMBER) {
  const told = new Promise((resolve) => client.setNotificationHandler(ToolListChangedNotificationSchema, resolve));
  await call(client, 'set_secret', { server: 'down', key: 'TOKEN', value: env.TS_NUMBER });
  await told;
  const offered = (await client.listTools()).tools.map((tool) => tool.name);
  report.gateway = {
    offered: offered.includes('down__echo_token_as_number'),
    number: await call(client, 'down__echo_token_as_number', {}),
    text: await call(client, 'down__echo_token', {}),
  };
}

if (kind === 'streamable-http') {
  await transport.terminateSession();
  report.afterTermination = await client.listTools().then(() => 'answered', () => 'refused');
}
await client.close();
process.stdout.write(JSON.stringify(report));
