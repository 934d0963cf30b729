// The openai npm package and the Vercel AI SDK against a running gateway.
//
//   OWNLM_BASE_URL=http://127.0.0.1:8400/v1 OWNLM_KEY=sk-... OWNLM_BAD_KEY=sk-bad \
//       node tests/clients/node/clients.mjs
//
// The gateway must serve a chat model `chat` and an embedding model `emb` (the stand-in upstream
// of tests/gateway/test_clients_outside.py, which reads the output). Prints one JSON object, one
// key per library and feature: what came back, or {"error": "<type>: <message>"}.

import { createOpenAI } from "@ai-sdk/openai";
import { embed, embedMany, generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import OpenAI from "openai";
import { zodResponseFormat, zodTextFormat } from "openai/helpers/zod";
import { z } from "zod";

const BASE_URL = process.env.OWNLM_BASE_URL;
const KEY = process.env.OWNLM_KEY;
const BAD_KEY = process.env.OWNLM_BAD_KEY;
const ASK = [{ role: "user", content: "weather in Paris?" }];
const Weather = z.object({ city: z.string(), temp_c: z.number().int() });
const WEATHER_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};

function errorName(err) {
  return {
    raised: err?.constructor?.name ?? typeof err,
    status: err?.status ?? err?.statusCode ?? null,
    message: String(err?.message ?? err).slice(0, 300),
  };
}

async function expectError(run) {
  try {
    await run();
  } catch (err) {
    return errorName(err);
  }
  return { raised: null };
}

// -- openai (npm) --------------------------------------------------------------------------

const client = new OpenAI({ baseURL: BASE_URL, apiKey: KEY, maxRetries: 0 });

async function openaiPlain() {
  const r = await client.chat.completions.create({
    model: "chat",
    messages: [{ role: "user", content: "hello there" }],
  });
  return { text: r.choices[0].message.content, usage: r.usage.total_tokens };
}

async function openaiStream() {
  const stream = await client.chat.completions.create({
    model: "chat",
    messages: [{ role: "user", content: "hello stream" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage.total_tokens;
  }
  return { chunks, text, usage };
}

async function openaiTools() {
  const first = await client.chat.completions.create({
    model: "chat",
    messages: ASK,
    tools: [WEATHER_TOOL],
  });
  const msg = first.choices[0].message;
  const call = msg.tool_calls[0];
  const second = await client.chat.completions.create({
    model: "chat",
    messages: [...ASK, msg, { role: "tool", tool_call_id: call.id, content: "sunny in Paris" }],
    tools: [WEATHER_TOOL],
  });
  // streamed: the helper that reassembles tool-call deltas
  const runner = client.chat.completions.stream({
    model: "chat",
    messages: ASK,
    tools: [WEATHER_TOOL],
  });
  const streamed = await runner.finalChatCompletion();
  const sCall = streamed.choices[0].message.tool_calls[0];
  return {
    call: [call.function.name, JSON.parse(call.function.arguments)],
    after: second.choices[0].message.content,
    streamed: [sCall.function.name, JSON.parse(sCall.function.arguments)],
  };
}

async function openaiStructured() {
  const r = await client.chat.completions.parse({
    model: "chat",
    messages: ASK,
    response_format: zodResponseFormat(Weather, "weather"),
  });
  return r.choices[0].message.parsed;
}

async function openaiResponses() {
  const r = await client.responses.create({ model: "chat", input: "hello there" });
  const parsed = await client.responses.parse({
    model: "chat",
    input: "weather?",
    text: { format: zodTextFormat(Weather, "weather") },
  });
  const again = await client.responses.retrieve(r.id);
  return {
    text: r.output_text,
    status: r.status,
    usage: r.usage.total_tokens,
    parsed: parsed.output_parsed,
    retrieved: again.output_text,
  };
}

async function openaiResponsesStream() {
  const stream = await client.responses.create({
    model: "chat",
    input: "hello stream",
    stream: true,
  });
  const types = new Set();
  let text = "";
  let final = null;
  for await (const ev of stream) {
    types.add(ev.type);
    if (ev.type === "response.output_text.delta") text += ev.delta;
    if (ev.type === "response.completed") final = ev.response.output[0].content[0].text;
  }
  // the helper that reassembles events, with a function call
  const helper = client.responses.stream({
    model: "chat",
    input: "weather in Paris?",
    tools: [{ type: "function", ...WEATHER_TOOL.function, strict: true }],
  });
  const done = await helper.finalResponse();
  const call = done.output.find((item) => item.type === "function_call");
  return { types: [...types].sort(), text, final, call: [call.name, JSON.parse(call.arguments)] };
}

async function openaiEmbeddings() {
  const r = await client.embeddings.create({ model: "emb", input: ["a", "b"] });
  const floats = await client.embeddings.create({
    model: "emb",
    input: "a",
    encoding_format: "float",
  });
  return { base64: r.data.map((d) => Array.from(d.embedding)), float: floats.data[0].embedding };
}

async function openaiBadKey() {
  const bad = new OpenAI({ baseURL: BASE_URL, apiKey: BAD_KEY, maxRetries: 0 });
  return {
    ...(await expectError(() => bad.chat.completions.create({ model: "chat", messages: ASK }))),
    isAuthenticationError: await bad.chat.completions
      .create({ model: "chat", messages: ASK })
      .catch((err) => err instanceof OpenAI.AuthenticationError),
  };
}

// -- the Vercel AI SDK -----------------------------------------------------------------------

const provider = createOpenAI({ baseURL: BASE_URL, apiKey: KEY });
// .chat(): chat completions; the provider called as a function: the Responses API (AI SDK 5+)
const MODELS = { chat: () => provider.chat("chat"), responses: () => provider("chat") };

const getWeather = tool({
  description: "The weather in a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => `sunny in ${city}`,
});

async function aiGenerateText(api) {
  const r = await generateText({
    model: MODELS[api](),
    system: "Be brief.",
    prompt: "hello there",
    maxRetries: 0,
  });
  // response.id tells the APIs apart: chatcmpl-... from chat, resp_<trace id> from Responses
  return { text: r.text, usage: r.usage.totalTokens, finish: r.finishReason, id: r.response.id };
}

async function aiStreamText(api) {
  const r = streamText({ model: MODELS[api](), prompt: "hello stream", maxRetries: 0 });
  const parts = [];
  for await (const t of r.textStream) parts.push(t);
  return { parts: parts.length, text: parts.join(""), usage: (await r.usage).totalTokens };
}

async function aiTools(api) {
  const r = await generateText({
    model: MODELS[api](),
    prompt: "weather in Paris?",
    tools: { get_weather: getWeather },
    stopWhen: stepCountIs(2),
    maxRetries: 0,
  });
  const s = streamText({
    model: MODELS[api](),
    prompt: "weather in Paris?",
    tools: { get_weather: getWeather },
    stopWhen: stepCountIs(2),
    maxRetries: 0,
  });
  const streamedText = await s.text;
  const streamedCalls = (await s.steps)[0].toolCalls;
  return {
    calls: r.steps[0].toolCalls.map((c) => [c.toolName, c.input]),
    text: r.text,
    streamedCalls: streamedCalls.map((c) => [c.toolName, c.input]),
    streamedText,
  };
}

async function aiGenerateObject(api) {
  const r = await generateObject({
    model: MODELS[api](),
    schema: Weather,
    prompt: "weather?",
    maxRetries: 0,
  });
  return r.object;
}

async function aiEmbed() {
  const one = await embed({ model: provider.embedding("emb"), value: "a", maxRetries: 0 });
  const many = await embedMany({
    model: provider.embedding("emb"),
    values: ["a", "b"],
    maxRetries: 0,
  });
  return { one: one.embedding, many: many.embeddings };
}

async function aiBadKey(api) {
  const bad = createOpenAI({ baseURL: BASE_URL, apiKey: BAD_KEY });
  const model = api === "chat" ? bad.chat("chat") : bad("chat");
  return expectError(() => generateText({ model, prompt: "hello", maxRetries: 0 }));
}

const FEATURES = {
  "openai.plain": openaiPlain,
  "openai.stream": openaiStream,
  "openai.tools": openaiTools,
  "openai.structured": openaiStructured,
  "openai.responses": openaiResponses,
  "openai.responses_stream": openaiResponsesStream,
  "openai.embeddings": openaiEmbeddings,
  "openai.bad_key": openaiBadKey,
  "ai.embed": aiEmbed,
};
for (const api of ["chat", "responses"]) {
  FEATURES[`ai.${api}.generateText`] = () => aiGenerateText(api);
  FEATURES[`ai.${api}.streamText`] = () => aiStreamText(api);
  FEATURES[`ai.${api}.tools`] = () => aiTools(api);
  FEATURES[`ai.${api}.generateObject`] = () => aiGenerateObject(api);
  FEATURES[`ai.${api}.bad_key`] = () => aiBadKey(api);
}

const results = {};
for (const [name, run] of Object.entries(FEATURES)) {
  try {
    results[name] = await run();
  } catch (err) {
    // one feature's failure is its result; the others still run
    console.error(name, err);
    const error = `${err?.constructor?.name}: ${String(err?.message ?? err)}`;
    results[name] = { error: error.slice(0, 2000) };
  }
}
results.versions = { node: process.version };
console.log(JSON.stringify(results));
