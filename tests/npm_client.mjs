// The npm `ollama` client (ollama-js) against the proxy: what it reads, as JSON on stdout.
// Run by tests/test_npm_client.py: node tests/npm_client.mjs HOST MODEL
import { Ollama } from "ollama";

const [host, model] = process.argv.slice(2);
const client = new Ollama({ host });
const options = { num_predict: 8, temperature: 0 };
const messages = [{ role: "user", content: "Say hello." }];
const out = {};

out.list = (await client.list()).models.map((m) => ({ name: m.name, size: m.size, modified_at: String(m.modified_at) }));
out.show = { capabilities: (await client.show({ model })).capabilities };
const whole = await client.chat({ model, messages, options, stream: false });
out.chat = { content: whole.message.content, done: whole.done, done_reason: whole.done_reason, eval_count: whole.eval_count };
const chunks = [];
for await (const part of await client.chat({ model, messages, options, stream: true })) {
  chunks.push({ content: part.message.content, done: part.done });
}
out.stream = chunks;
// What Open WebUI sends to unload a model: an empty prompt with keep_alive 0.
const unload = await client.generate({ model, prompt: "", keep_alive: 0 });
out.unload = { done: unload.done, done_reason: unload.done_reason, response: unload.response };
try {
  await client.chat({ model: "no-such-model", messages, options });
  out.missing = null;
} catch (error) {
  out.missing = { name: error.name, status_code: error.status_code, message: error.error };
}
console.log(JSON.stringify(out));
