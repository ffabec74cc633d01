// The dashboard's shell: sign-in (the key lives in session storage), navigation by #/page, and the pages.
import { api, ApiError, session, showStatus } from "./dom.js";
import { overview } from "./overview.js";
import { budgets, providers, keys } from "./admin.js";
import { playground } from "./playground.js";

const PAGES = { overview, budgets, providers, keys, playground };
const MASTER_ONLY = new Set(["budgets", "providers", "keys"]);
const state = { master: false, keyId: null };

const $ = (id) => document.getElementById(id);

async function signIn(key) {
  // /v1/quota answers any valid key with its id ("master" for the master key), and 401 otherwise.
  const q = await api("/v1/quota", { key });
  state.master = q.key_id === "master";
  state.keyId = q.key_id;
}

function showLogin(message) {
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("page").hidden = true;
  $("page").replaceChildren();
  $("login").hidden = false;
  if (message) showStatus(message);
  $("login-key").focus();
}

async function route() {
  if (!session.key) return showLogin();
  let name = (location.hash.replace(/^#\/?/, "") || "overview").split("?")[0];
  if (!PAGES[name] || (MASTER_ONLY.has(name) && !state.master)) name = "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  showStatus(null);
  const page = $("page");
  page.hidden = false;
  page.replaceChildren();
  try {
    await PAGES[name](page, state);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      session.key = null;
      return showLogin("The key is no longer valid: sign in again.");
    }
    showStatus(e.message || String(e));
  }
}

function showApp() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  for (const a of document.querySelectorAll(".master-only")) a.hidden = !state.master;
  $("who").textContent = state.master ? "master key" : `key ${state.keyId}`;
}

async function start() {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = $("login-key").value.trim();
    if (!key) return;
    try {
      await signIn(key);
    } catch (e) {
      showStatus(e instanceof ApiError && e.status === 401 ? "That key was not accepted." : e.message);
      return;
    }
    session.key = key;
    $("login-key").value = "";
    showApp();
    if (!location.hash) location.hash = "#/overview";
    else await route();
    $("main").focus();
  });
  $("logout").addEventListener("click", () => {
    session.key = null;
    state.master = false;
    history.replaceState(null, "", "#/overview");
    showLogin();
  });
  window.addEventListener("hashchange", route);
  if (session.key) {
    try {
      await signIn(session.key);
    } catch (e) {
      session.key = null;
      return showLogin(e instanceof ApiError && e.status === 401 ? "Sign in again." : e.message);
    }
    showApp();
    await route();
  } else {
    showLogin();
  }
}

start();
