// sonoff-ota: reference firmware of the sonoff-hil harness for Sonoff Basic and Sonoff 4CH.
//
// A two-state machine. RUN: a short press of the button (GPIO0) toggles relay 1 (GPIO12).
// A long press enters UPDATE: only then the OTA service (ArduinoOTA, or ESP8266HTTPUpdateServer
// on port 80 /update) is started, so nobody on the network can update a device that nobody
// touched. UPDATE ends after a timeout, a short press, or a successful update (restart).
//
// Everything this sketch prints or serves is described in ../behaviour.toml; the harness and its
// simulator follow that file, and a harness unit test checks the literals below against it.
// Change both together.
//
// Target: esp8266/Arduino core 3.1.x (APIs checked against 3.1.2). Build notes: ../README.md.

#include <ESP8266WiFi.h>

// ---- Build options ------------------------------------------------------------------------
// OTA method: exactly one of smnArduinoOTA / smnWebServerOTA (here or as -D build flag).
#if !defined(smnArduinoOTA) && !defined(smnWebServerOTA)
#define smnArduinoOTA
// #define smnWebServerOTA
#endif
#if defined(smnArduinoOTA) && defined(smnWebServerOTA)
#error "define only one of smnArduinoOTA and smnWebServerOTA"
#endif

#ifndef SMN_FW_VERSION
#define SMN_FW_VERSION "1.0.0"
#endif
#ifndef SMN_WIFI_SSID
#define SMN_WIFI_SSID "your-ssid"
#endif
#ifndef SMN_WIFI_PASS
#define SMN_WIFI_PASS "your-password"
#endif
// Optional OTA password: espota digest challenge, or HTTP auth as user kHttpUser.
// #define SMN_OTA_PASSWORD "secret"

#if defined(smnArduinoOTA)
#include <ArduinoOTA.h>
#define SMN_OTA_NAME "arduino"
#else
#include <ESP8266WebServer.h>
#include <ESP8266HTTPUpdateServer.h>
#define SMN_OTA_NAME "webserver"
#endif

// ---- Behaviour constants (must match ../behaviour.toml) -----------------------------------
static const uint32_t kBaud = 115200;
static const uint8_t kButtonPin = 0;   // active low, also the boot strap
static const uint8_t kRelayPin = 12;   // active high
static const uint8_t kLedPin = 13;     // active low
static const uint32_t kDebounceMs = 50;
static const uint32_t kLongPressMs = 3000;
static const uint32_t kLedBlinkMs = 250;
static const uint32_t kUpdateTimeoutMs = 120000;
static const uint16_t kEspotaPort = 8266;
static const uint16_t kHttpPort = 80;
static const char kUpdatePath[] = "/update";
static const char kHttpUser[] = "admin";
static const unsigned kProgressStepPercent = 10;

// The identity record. `harness image inspect` finds this NUL-terminated string in the image
// (it lives in .rodata); every state line starts with it.
const char kIdentity[] = "HILFW app=sonoff-ota version=" SMN_FW_VERSION " ota=" SMN_OTA_NAME;

// ---- State ---------------------------------------------------------------------------------
enum FwState { STATE_RUN, STATE_UPDATE };

static FwState state = STATE_RUN;
static uint32_t updateEnteredMs = 0;
static bool endpointPrinted = false;
static bool relayOn = false;
static bool wifiWasUp = false;

// Button: the raw level must be stable for kDebounceMs before it counts.
static bool buttonRaw = false;        // true = pressed
static bool buttonPressed = false;    // debounced
static uint32_t buttonRawSinceMs = 0; // time of the last raw edge
static bool longPressDone = false;

#if defined(smnWebServerOTA)
static ESP8266WebServer httpServer(kHttpPort);
// serial_debug = true: the update server prints its own upload lines (behaviour.toml [http.serial]).
static ESP8266HTTPUpdateServer httpUpdater(true);
#endif

static const char *stateName(FwState s) {
  return s == STATE_RUN ? "RUN" : "UPDATE";
}

static void printStateLine() {
  Serial.printf("%s state=%s\r\n", kIdentity, stateName(state));
}

static void setRelay(bool on) {
  relayOn = on;
  digitalWrite(kRelayPin, on ? HIGH : LOW);
}

// ---- OTA service: started on entering UPDATE, stopped on leaving it -----------------------
#if defined(smnArduinoOTA)
static const char *otaErrorKind(ota_error_t e) {
  switch (e) {
    case OTA_AUTH_ERROR: return "auth";
    case OTA_BEGIN_ERROR: return "begin";
    case OTA_CONNECT_ERROR: return "connect";
    case OTA_RECEIVE_ERROR: return "receive";
    case OTA_END_ERROR: return "end";
    default: return "other";
  }
}

static void otaSetup() {
  ArduinoOTA.setPort(kEspotaPort);
#ifdef SMN_OTA_PASSWORD
  ArduinoOTA.setPassword(SMN_OTA_PASSWORD);
#endif
  ArduinoOTA.onStart([]() { Serial.printf("OTA start\r\n"); });
  ArduinoOTA.onEnd([]() { Serial.printf("OTA end\r\n"); });
  ArduinoOTA.onProgress([](unsigned int done, unsigned int total) {
    static unsigned lastStep = 0;
    unsigned percent = total ? (unsigned)((uint64_t)done * 100 / total) : 0;
    unsigned step = percent / kProgressStepPercent * kProgressStepPercent;
    if (done == 0 || step != lastStep) {
      lastStep = step;
      Serial.printf("OTA progress %u%%\r\n", step);
    }
  });
  ArduinoOTA.onError([](ota_error_t e) {
    if (e == OTA_BEGIN_ERROR || e == OTA_END_ERROR) {
      // The Updater keeps its last error, so its code and text are still valid here.
      Serial.printf("OTA error %s: ERROR[%u]: %s\r\n", otaErrorKind(e), Update.getError(),
                    Update.getErrorString().c_str());
    } else {
      Serial.printf("OTA error %s\r\n", otaErrorKind(e));
    }
  });
}

static void otaStart() { ArduinoOTA.begin(); }
static void otaStop() { ArduinoOTA.end(); }
static void otaHandle() { ArduinoOTA.handle(); }

static void printEndpoint() {
  Serial.printf("HILFW endpoint=espota://%s:%u\r\n", WiFi.localIP().toString().c_str(),
                kEspotaPort);
}
#else
static void otaSetup() {
#ifdef SMN_OTA_PASSWORD
  httpUpdater.setup(&httpServer, kUpdatePath, kHttpUser, SMN_OTA_PASSWORD);
#else
  httpUpdater.setup(&httpServer, kUpdatePath);
#endif
}

static void otaStart() { httpServer.begin(); }
static void otaStop() { httpServer.stop(); }
static void otaHandle() { httpServer.handleClient(); }

static void printEndpoint() {
  Serial.printf("HILFW endpoint=http://%s:%u/update\r\n", WiFi.localIP().toString().c_str(),
                kHttpPort);
}
#endif

// The one place where the state changes.
static void transition(FwState next) {
  if (next == state) return;
  if (next == STATE_UPDATE) {
    otaStart();
    updateEnteredMs = millis();
    endpointPrinted = false;
  } else {
    otaStop();
  }
  state = next;
  printStateLine();
}

static void onShortPress() {
  if (state == STATE_RUN) {
    setRelay(!relayOn);
    Serial.printf("relay 1 %s\r\n", relayOn ? "on" : "off");
  } else {
    transition(STATE_RUN);
  }
}

static void onLongPress() {
  if (state == STATE_RUN) transition(STATE_UPDATE);
}

static void pollButton(uint32_t now) {
  bool raw = digitalRead(kButtonPin) == LOW;
  if (raw != buttonRaw) {
    buttonRaw = raw;
    buttonRawSinceMs = now;
  }
  if (raw != buttonPressed && now - buttonRawSinceMs >= kDebounceMs) {
    buttonPressed = raw;
    if (raw) {
      longPressDone = false;
    } else if (!longPressDone) {
      onShortPress();
    }
  }
  if (buttonPressed && !longPressDone && now - buttonRawSinceMs >= kLongPressMs) {
    longPressDone = true;
    onLongPress();
  }
}

static void pollWifi() {
  bool up = WiFi.status() == WL_CONNECTED;
  if (up && !wifiWasUp) {
    Serial.printf("WiFi connected ip=%s\r\n", WiFi.localIP().toString().c_str());
  }
  wifiWasUp = up;
}

static void showLed(uint32_t now) {
  bool on = true;
  if (state == STATE_UPDATE) on = ((now - updateEnteredMs) / kLedBlinkMs) % 2 == 0;
  digitalWrite(kLedPin, on ? LOW : HIGH);
}

void setup() {
  Serial.begin(kBaud);
  Serial.println();  // end whatever the ROM printed at 74880 baud

  pinMode(kButtonPin, INPUT_PULLUP);
  pinMode(kRelayPin, OUTPUT);
  pinMode(kLedPin, OUTPUT);
  setRelay(false);
  showLed(millis());

  WiFi.persistent(false);  // do not rewrite the SDK config sectors on every boot
  WiFi.mode(WIFI_STA);
  WiFi.begin(SMN_WIFI_SSID, SMN_WIFI_PASS);

  otaSetup();
  printStateLine();
}

void loop() {
  uint32_t now = millis();
  pollButton(now);
  pollWifi();
  if (state == STATE_UPDATE) {
    if (now - updateEnteredMs >= kUpdateTimeoutMs) {
      transition(STATE_RUN);
    } else {
      if (!endpointPrinted && wifiWasUp) {
        printEndpoint();
        endpointPrinted = true;
      }
      otaHandle();  // blocks for the whole upload once one starts
    }
  }
  showLed(now);
  delay(1);
}
