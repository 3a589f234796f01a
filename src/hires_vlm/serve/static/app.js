// The hires-vlm web demo: chat about an image through the server's own OpenAI API (streamed), and
// show how the model's method cuts the image (POST /v1/hires_vlm/cut: the figure of
// `hires-vlm inspect --save-figure`), with SliME's dropped local tokens once an answer reports them.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, method: null, messages: [], image: null, imagePending: false, busy: false };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const res = await fetch(path, { method: body ? "POST" : "GET", headers: headers(),
                                  body: body ? JSON.stringify(body) : undefined });
  const data = await res.json().catch(() => ({ error: { message: res.status + " " + res.statusText } }));
  if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
  return data;
}

function status(text) { $("status").textContent = text; }

async function loadModel() {
  try {
    const m = (await api("/v1/models")).data[0];
    state.model = m.id;
    state.method = m.hires_vlm.method;
    $("model").textContent = `${m.id} — ${m.hires_vlm.method}, context ${m.hires_vlm.context_length} tokens`;
  } catch (err) {
    $("model").textContent = "model: " + err.message;
  }
}

function readDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function addMessage(role, text, image) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    div.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("chat").appendChild(div);
  $("chat").scrollTop = $("chat").scrollHeight;
  return div;
}

function describeCut(cut, observed) {
  const views = Object.entries(cut.views).map(([k, n]) => `${n} ${k}`).join(", ");
  const lines = [
    `method         ${cut.method}`,
    `image          ${cut.image_size[0]} x ${cut.image_size[1]}`,
    `grid           ${cut.grid[0]} columns x ${cut.grid[1]} rows (canvas ${cut.canvas_size[0]} x ${cut.canvas_size[1]})`,
    `views          ${cut.num_views}: ${views}`,
    `visual tokens  ${cut.visual_tokens_upper_bound} at most`,
  ];
  if (observed) {
    lines.push(`in the answer  ${observed.visual_tokens} visual tokens`);
    if (observed.kept_local_tokens) {
      lines.push(`router         kept ${observed.kept_local_tokens.length} of ${observed.local_tokens} local tokens` +
                 " (dark on the image: dropped)");
    }
  }
  return lines.join("\n");
}

async function showCut(observed) {
  const body = { image_url: { url: state.image } };
  if (observed && observed.kept_local_tokens) {
    body.local_grid = observed.local_grid;
    body.kept_local_tokens = observed.kept_local_tokens;
  }
  const d = await api("/v1/hires_vlm/cut", body);
  const fig = $("cut-figure");
  fig.src = d.figure;
  fig.hidden = false;
  fig.dataset.router = body.kept_local_tokens ? "shown" : "none";
  $("cut-info").textContent = describeCut(d.cut, observed);
}

$("image-input").addEventListener("change", async () => {
  const file = $("image-input").files[0];
  if (!file) return;
  try {
    state.image = await readDataURL(file);
    state.imagePending = true;
    $("preview").src = state.image;
    $("preview").hidden = false;
    status("drawing the cut…");
    await showCut(null);
    status("");
  } catch (err) {
    status("image: " + err.message);
  }
});

// Server-sent events of an OpenAI stream → onChunk(object) per event, until [DONE].
async function readStream(res, onChunk) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}

$("ask").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (state.busy || (!text && !state.imagePending)) return;
  if (!state.model) await loadModel();
  state.busy = true;
  $("send").disabled = true;
  const content = [];
  const withImage = state.image && state.imagePending;
  if (withImage) content.push({ type: "image_url", image_url: { url: state.image } });
  content.push({ type: "text", text: text });
  const sent = [...state.messages, { role: "user", content: content }];
  addMessage("user", text, withImage ? state.image : null);
  const bubble = addMessage("assistant", "");
  const out = bubble.querySelector(".text");
  let answer = "", observed = null, usage = null;
  status("thinking…");
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ model: state.model, messages: sent, stream: true,
                             max_tokens: Number($("max-tokens").value) || 64,
                             temperature: Number($("temperature").value) || 0 }),
    });
    if (!res.ok) {
      const data = await res.json().catch(() => ({}));
      throw new Error(data.error ? data.error.message : res.status + " " + res.statusText);
    }
    await readStream(res, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        answer += choice.delta.content;
        out.textContent = answer;
      }
      if (chunk.hires_vlm) observed = chunk.hires_vlm;
      if (chunk.usage) usage = chunk.usage;
    });
    state.messages = [...sent, { role: "assistant", content: answer }];
    if (withImage) state.imagePending = false;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = (answer ? "" : "(empty answer) ") +
      (usage ? `${usage.completion_tokens} tokens, ${usage.prompt_tokens} prompt tokens (${usage.visual_tokens} visual)` : "") +
      (observed ? `, batch of ${observed.batch_size}` : "");
    bubble.appendChild(meta);
    bubble.dataset.done = "1";
    $("prompt").value = "";
    status("");
    if (observed && observed.images.length && state.image) {
      await showCut(observed.images[observed.images.length - 1]);
    }
  } catch (err) {
    bubble.className = "msg error";
    out.textContent = err.message;
    bubble.dataset.done = "1";
    status("");
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
});

$("reset").addEventListener("click", () => {
  state.messages = [];
  state.imagePending = Boolean(state.image);
  $("chat").innerHTML = "";
});

$("api-key").addEventListener("change", loadModel);
loadModel();
