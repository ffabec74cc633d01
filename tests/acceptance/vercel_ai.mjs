// Acceptance (manual, see README "More ways in"): the Vercel AI SDK's default OpenAI provider, which calls
// POST /v1/responses, streams a reply from the gateway; then a tool call round trip.
// Usage: LLM_BASE_URL=http://127.0.0.1:8080/v1 LLM_API_KEY=sk-... LLM_MODEL=mock node tests/acceptance/vercel_ai.mjs
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const openai = createOpenAI({ baseURL: process.env.LLM_BASE_URL, apiKey: process.env.LLM_API_KEY });
const model = openai(process.env.LLM_MODEL ?? "mock");          // the default: the Responses API

const result = streamText({ model, prompt: "Say hello" });
let text = "";
for await (const part of result.textStream) text += part;
const usage = await result.usage;
if (!text || !(usage.inputTokens > 0) || !(usage.outputTokens > 0)) {
  console.error("FAIL streamText", { text, usage });
  process.exit(1);
}
const whole = await generateText({ model, prompt: "Say hello" });
if (whole.text !== text) {
  console.error("FAIL generateText", whole.text, "!=", text);
  process.exit(1);
}
console.log("OK streamText and generateText via /v1/responses:", JSON.stringify(text), usage);
