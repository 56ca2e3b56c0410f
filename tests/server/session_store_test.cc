// The file session store on real files in a temporary directory: round trips, version
// replacement, recovery at open, hostile directory contents and ids, every injected fault at every
// step of a Put, a simulated crash at every step, the fault spec (parsed, from a file switched at
// run time, seeded), and concurrent Puts from threads.
#include "server/session_store.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "gtest/gtest.h"
#include "server/fault_injecting_store_env.h"

namespace mnemo::server {
namespace {

namespace fs = std::filesystem;

const std::string kId = "0123456789abcdef0123456789abcdef";
const std::string kOtherId = "fedcba9876543210fedcba9876543210";

std::string Bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::string VersionName(int64_t version) { return absl::StrFormat("%020d.snap", version); }

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  ASSERT_TRUE(out.good()) << path;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Names in `dir`, sorted; empty when it does not exist.
std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

class SessionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "mnemo_store_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    dir_ = root_ + "/store";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::unique_ptr<SessionStore> Open(StoreEnv* env = PosixStoreEnv()) {
    absl::StatusOr<std::unique_ptr<SessionStore>> store = OpenFileSessionStore(dir_, env);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }
  void Reset() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string SessionDir(const std::string& id) const { return dir_ + "/sessions/" + id; }
  std::string SnapPath(const std::string& id, int64_t v) const {
    return SessionDir(id) + "/" + VersionName(v);
  }

  std::string root_;  // the test's temporary directory
  std::string dir_;   // the store, inside it
};

TEST_F(SessionStoreTest, PutNewestReadListDeleteRoundTrip) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(absl::IsNotFound(store->Newest(kId).status()));
  const std::string data = Bytes(3000, 1);
  ASSERT_TRUE(store->Put(kId, 7, data).ok());

  absl::StatusOr<StoredVersion> newest = store->Newest(kId);
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ(newest->id, kId);
  EXPECT_EQ(newest->version, 7);
  EXPECT_EQ(newest->bytes, 3000);
  absl::StatusOr<std::string> read = store->Read(*newest);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, data);

  ASSERT_TRUE(store->Put(kOtherId, 2, "other").ok());
  absl::StatusOr<std::vector<StoredVersion>> list = store->List();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].id, kId);
  EXPECT_EQ((*list)[0].version, 7);
  EXPECT_EQ((*list)[1].id, kOtherId);
  EXPECT_EQ((*list)[1].bytes, 5);

  ASSERT_TRUE(store->Delete(kId).ok());
  EXPECT_TRUE(absl::IsNotFound(store->Newest(kId).status()));
  EXPECT_TRUE(absl::IsNotFound(store->Read(*newest).status()));
  EXPECT_FALSE(fs::exists(SessionDir(kId)));
  EXPECT_TRUE(store->Delete(kId).ok());  // nothing left: still OK
  list = store->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, kOtherId);
  EXPECT_NE(store->Describe().find(dir_), std::string::npos);

  // A reopened store serves what was published.
  store = Open();
  ASSERT_NE(store, nullptr);
  read = store->Read({kOtherId, 2, 5});
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, "other");
}

TEST_F(SessionStoreTest, OpenCreatesMissingParentsAndFailsOnAFile) {
  dir_ = root_ + "/a/b/store/";
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 1, "one").ok());
  EXPECT_TRUE(fs::exists(root_ + "/a/b/store/sessions/" + kId + "/" + VersionName(1)));
  WriteFile(root_ + "/file", "x");
  const absl::Status status = OpenFileSessionStore(root_ + "/file/store", PosixStoreEnv()).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_NE(status.message().find(root_ + "/file"), absl::string_view::npos) << status;
}

TEST_F(SessionStoreTest, ReadNeverReturnsMoreThanAsked) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 1, "0123456789").ok());
  EXPECT_EQ(*store->Read({kId, 1, 10}, 0), "");
  EXPECT_EQ(*store->Read({kId, 1, 10}, 4), "0123");
  EXPECT_EQ(*store->Read({kId, 1, 10}, 10), "0123456789");
  EXPECT_EQ(*store->Read({kId, 1, 10}, 1000), "0123456789");
  EXPECT_TRUE(absl::IsNotFound(store->Read({kId, 2, 10}).status()));
}

TEST_F(SessionStoreTest, FilesArePrivateAndSnapshotsLargerThanAChunkRoundTrip) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  const std::string data = Bytes((5u << 20) / 2 + 17, 2);  // three appends
  ASSERT_TRUE(store->Put(kId, 1, data).ok());
  EXPECT_EQ(*store->Read(*store->Newest(kId)), data);
  struct stat st {};
  ASSERT_EQ(::stat(SnapPath(kId, 1).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(SessionDir(kId).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((dir_ + "/sessions").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(SessionStoreTest, ANewerVersionReplacesTheOlderOnce) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 1, "one").ok());
  ASSERT_TRUE(store->Put(kId, 2, "two").ok());
  EXPECT_EQ(Names(SessionDir(kId)), std::vector<std::string>{VersionName(2)});
  EXPECT_EQ(store->Newest(kId)->version, 2);
  EXPECT_TRUE(absl::IsNotFound(store->Read({kId, 1, 3}).status()));
  // The same version again replaces it in place.
  ASSERT_TRUE(store->Put(kId, 2, "two again").ok());
  EXPECT_EQ(*store->Read(*store->Newest(kId)), "two again");
  EXPECT_EQ(Names(SessionDir(kId)), std::vector<std::string>{VersionName(2)});
}

TEST_F(SessionStoreTest, ALowerVersionTakesTheSessionBack) {
  FaultInjectingStoreEnv env(PosixStoreEnv());
  auto store = Open(&env);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 5, "five").ok());
  ASSERT_TRUE(store->Put(kId, 4, "four").ok());
  EXPECT_EQ(Names(SessionDir(kId)), std::vector<std::string>{VersionName(4)});
  EXPECT_EQ(store->Newest(kId)->version, 4);
  EXPECT_EQ(*store->Read(*store->Newest(kId)), "four");
  // A newer version that cannot be removed would stay the newest: that Put fails.
  ASSERT_TRUE(store->Put(kId, 7, "seven").ok());
  ASSERT_TRUE(env.SetSpec("remove:fail").ok());
  EXPECT_EQ(store->Put(kId, 6, "six").code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(env.SetSpec("").ok());
}

TEST_F(SessionStoreTest, AnOlderVersionFailingToGoAwayLeavesThePutDurableAndTheNewestListed) {
  FaultInjectingStoreEnv env(PosixStoreEnv());
  auto store = Open(&env);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 1, "one").ok());
  ASSERT_TRUE(env.SetSpec("remove:fail@1").ok());
  ASSERT_TRUE(store->Put(kId, 2, "two").ok());
  EXPECT_EQ(env.injected(StoreOp::kRemove), 1);
  EXPECT_EQ(Names(SessionDir(kId)), (std::vector<std::string>{VersionName(1), VersionName(2)}));
  EXPECT_EQ(store->Newest(kId)->version, 2);
  EXPECT_EQ(store->List()->at(0).version, 2);
  ASSERT_TRUE(store->Put(kId, 3, "three").ok());  // the next Put removes both
  EXPECT_EQ(Names(SessionDir(kId)), std::vector<std::string>{VersionName(3)});
}

TEST_F(SessionStoreTest, SeveralVersionsLeftByACrashListTheNewest) {
  fs::create_directories(SessionDir(kId));
  WriteFile(SnapPath(kId, 3), "three");
  WriteFile(SnapPath(kId, 12), "twelve");
  WriteFile(SnapPath(kId, 5), "five");
  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<StoredVersion> newest = store->Newest(kId);
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->version, 12);
  EXPECT_EQ(newest->bytes, 6);
  absl::StatusOr<std::vector<StoredVersion>> list = store->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].version, 12);
  ASSERT_TRUE(store->Delete(kId).ok());
  EXPECT_FALSE(fs::exists(SessionDir(kId)));
}

TEST_F(SessionStoreTest, OpenRemovesLeftoverTemporaryFiles) {
  fs::create_directories(SessionDir(kId));
  fs::create_directories(SessionDir(kOtherId));
  WriteFile(SnapPath(kId, 4), "four");
  WriteFile(SessionDir(kId) + "/.tmp-5-0123456789abcdef", "half a fi");
  WriteFile(SessionDir(kOtherId) + "/.tmp-1-aaaa", "the first put of a session");
  auto store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Names(SessionDir(kId)), std::vector<std::string>{VersionName(4)});
  EXPECT_FALSE(fs::exists(SessionDir(kOtherId)));  // left empty: removed
  absl::StatusOr<std::vector<StoredVersion>> list = store->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, kId);
}

TEST_F(SessionStoreTest, HostileDirectoryContentsAreSkippedOrReported) {
  const std::string sessions = dir_ + "/sessions";
  const std::string outside = root_ + "/outside";
  fs::create_directories(sessions);
  fs::create_directories(outside);
  WriteFile(outside + "/" + VersionName(1), "outside the store");
  WriteFile(outside + "/secret", "secret");

  WriteFile(sessions + "/not-a-session", "x");
  fs::create_directories(sessions + "/0123456789ABCDEF0123456789ABCDEF");  // uppercase
  WriteFile(sessions + "/0123456789ABCDEF0123456789ABCDEF/" + VersionName(1), "upper");
  const std::string file_id = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";  // a file where a dir belongs
  WriteFile(sessions + "/" + file_id, "not a directory");
  const std::string link_id = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";  // a link to a directory
  fs::create_directory_symlink(outside, sessions + "/" + link_id);
  const std::string snap_link_id = "cccccccccccccccccccccccccccccccc";  // a version is a link
  fs::create_directories(sessions + "/" + snap_link_id);
  WriteFile(sessions + "/" + snap_link_id + "/" + VersionName(1), "good");
  fs::create_symlink(outside + "/secret", sessions + "/" + snap_link_id + "/" + VersionName(9));
  const std::string zero_id = "dddddddddddddddddddddddddddddddd";  // a zero-byte version
  fs::create_directories(sessions + "/" + zero_id);
  WriteFile(sessions + "/" + zero_id + "/" + VersionName(5), "");
  const std::string junk_id = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";  // junk beside a version
  const std::string junk = sessions + "/" + junk_id;
  fs::create_directories(junk);
  WriteFile(junk + "/" + VersionName(1), "one");
  WriteFile(junk + "/garbage", "g");
  WriteFile(junk + "/123.snap", "short");
  WriteFile(junk + "/000000000000000000003.snap", "21 digits");
  WriteFile(junk + "/99999999999999999999.snap", "past int64");
  WriteFile(junk + "/0000000000000000000x.snap", "not digits");
  fs::create_directories(junk + "/" + VersionName(2));  // a directory by a version's name
  fs::create_directories(junk + "/.tmp-7-dir");         // and by a temporary file's
  fs::create_directories(sessions + "/ffffffffffffffffffffffffffffffff");  // empty

  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<StoredVersion>> list = store->List();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].id, snap_link_id);
  EXPECT_EQ((*list)[0].version, 1);
  EXPECT_EQ((*list)[0].bytes, 4);
  EXPECT_EQ((*list)[1].id, zero_id);  // listed as it is: restoring it fails, and quarantines it
  EXPECT_EQ((*list)[1].bytes, 0);
  EXPECT_EQ((*list)[2].id, junk_id);
  EXPECT_EQ((*list)[2].version, 1);

  EXPECT_EQ(*store->Read((*list)[1]), "");
  // Nothing reads or writes through a link.
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Read({snap_link_id, 9, 0}).status()));
  EXPECT_TRUE(absl::IsNotFound(store->Newest(link_id).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Put(link_id, 2, "through a link")));
  EXPECT_TRUE(absl::IsNotFound(store->Newest(file_id).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Put(file_id, 1, "x")));
  EXPECT_EQ(Names(outside), (std::vector<std::string>{VersionName(1), "secret"}));
  EXPECT_EQ(Slurp(outside + "/secret"), "secret");

  // Delete removes the versions and leaves what is not the store's.
  ASSERT_TRUE(store->Delete(junk_id).ok());
  EXPECT_TRUE(absl::IsNotFound(store->Newest(junk_id).status()));
  EXPECT_TRUE(fs::exists(junk + "/garbage"));
  EXPECT_FALSE(fs::exists(junk + "/" + VersionName(1)));
  ASSERT_TRUE(store->Delete(snap_link_id).ok());
  EXPECT_EQ(Slurp(outside + "/secret"), "secret");  // the link went, not its target
  EXPECT_FALSE(store->Delete(file_id).ok());

  // Quarantining the zero-byte version takes the session out of the list.
  ASSERT_TRUE(store->Quarantine((*list)[1], "empty").ok());
  list = store->List();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST_F(SessionStoreTest, BadIdsAndVersionsAreRejectedAndNeverEscapeTheDirectory) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  const std::vector<std::string> bad_ids = {
      "",
      "..",
      "../../../../../../tmp/escape",
      "0123456789abcdef0123456789abcde",    // 31
      "0123456789abcdef0123456789abcdef0",  // 33
      "0123456789ABCDEF0123456789ABCDEF",
      "0123456789abcdef0123456789abc/..",
      "/123456789abcdef0123456789abcdef",
      std::string("0123456789abcdef0123456789abcd\0f", 32),
      "0123456789abcdef0123456789abcdeg",
  };
  for (const std::string& id : bad_ids) {
    SCOPED_TRACE(id);
    EXPECT_TRUE(absl::IsInvalidArgument(store->Put(id, 1, "x")));
    EXPECT_TRUE(absl::IsInvalidArgument(store->Newest(id).status()));
    EXPECT_TRUE(absl::IsInvalidArgument(store->Read({id, 1, 1}).status()));
    EXPECT_TRUE(absl::IsInvalidArgument(store->Delete(id)));
    EXPECT_TRUE(absl::IsInvalidArgument(store->Quarantine({id, 1, 1}, "why")));
  }
  EXPECT_TRUE(absl::IsInvalidArgument(store->Put(kId, -1, "x")));
  EXPECT_TRUE(absl::IsInvalidArgument(store->Read({kId, -1, 1}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store->Quarantine({kId, -1, 1}, "why")));
  EXPECT_EQ(Names(root_), std::vector<std::string>{"store"});
  EXPECT_TRUE(Names(dir_ + "/sessions").empty());
  EXPECT_TRUE(Names(dir_ + "/quarantine").empty());
  EXPECT_FALSE(fs::exists("/tmp/escape"));
}

TEST_F(SessionStoreTest, QuarantineMovesTheVersionAsideWithItsReason) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 3, "corrupt").ok());
  WriteFile(SnapPath(kId, 2), "older, left by a crash");
  ASSERT_TRUE(store->Put(kOtherId, 1, "fine").ok());
  ASSERT_TRUE(store->Quarantine({kId, 3, 7}, "section 2: checksum mismatch").ok());

  const std::string base = absl::StrCat(dir_, "/quarantine/", kId, "-", "00000000000000000003");
  EXPECT_EQ(Slurp(base + ".snap"), "corrupt");
  EXPECT_EQ(Slurp(base + ".why"), "section 2: checksum mismatch\n");
  EXPECT_FALSE(fs::exists(SessionDir(kId)));
  EXPECT_TRUE(absl::IsNotFound(store->Newest(kId).status()));
  absl::StatusOr<std::vector<StoredVersion>> list = store->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].id, kOtherId);
  EXPECT_TRUE(absl::IsNotFound(store->Quarantine({kId, 3, 7}, "again")));

  // A reopened store keeps the quarantine and does not list it.
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->List()->size(), 1u);
  EXPECT_TRUE(fs::exists(base + ".snap"));
  // The session can be stored again.
  ASSERT_TRUE(store->Put(kId, 4, "fresh").ok());
  EXPECT_EQ(store->Newest(kId)->version, 4);
}

TEST_F(SessionStoreTest, PosixErrorsHaveTheirCodesAndPaths) {
  StoreEnv* env = PosixStoreEnv();
  absl::StatusOr<std::string> read = env->ReadFile(root_ + "/missing", 10);
  EXPECT_TRUE(absl::IsNotFound(read.status()));
  EXPECT_NE(read.status().message().find(root_ + "/missing"), absl::string_view::npos);
  EXPECT_TRUE(absl::IsNotFound(env->GetChildren(root_ + "/missing").status()));
  EXPECT_TRUE(absl::IsNotFound(env->NewWritableFile(root_ + "/missing/file").status()));
  WriteFile(root_ + "/file", "x");
  EXPECT_TRUE(absl::IsFailedPrecondition(env->CreateDir(root_ + "/file")));
  EXPECT_TRUE(env->CreateDir(root_).ok());  // exists: OK
  EXPECT_EQ(*env->GetFileSize(root_ + "/file"), 1u);
  EXPECT_TRUE(absl::IsFailedPrecondition(env->GetFileSize(root_).status()));
  if (::access("/dev/full", W_OK) == 0) {
    absl::StatusOr<std::unique_ptr<StoreWritableFile>> full = env->NewWritableFile("/dev/full");
    ASSERT_TRUE(full.ok()) << full.status();
    const absl::Status status = (*full)->Append("no room");
    EXPECT_TRUE(absl::IsResourceExhausted(status)) << status;
    EXPECT_NE(status.message().find("/dev/full"), absl::string_view::npos);
  }
}

TEST(StoreFaultSpecTest, ParsesRulesAndNamesTheBadOne) {
  absl::StatusOr<std::vector<StoreFaultRule>> rules =
      ParseStoreFaultSpec(" append:full , sync:fail@3,any:tear@2+%0.25\nread:fail ");
  ASSERT_TRUE(rules.ok()) << rules.status();
  ASSERT_EQ(rules->size(), 4u);
  EXPECT_EQ((*rules)[0].op, StoreOp::kAppend);
  EXPECT_EQ((*rules)[0].mode, StoreFaultMode::kFull);
  EXPECT_EQ((*rules)[0].nth, 0);
  EXPECT_EQ((*rules)[1].op, StoreOp::kSync);
  EXPECT_EQ((*rules)[1].nth, 3);
  EXPECT_FALSE((*rules)[1].and_later);
  EXPECT_FALSE((*rules)[2].op.has_value());
  EXPECT_EQ((*rules)[2].mode, StoreFaultMode::kTear);
  EXPECT_EQ((*rules)[2].nth, 2);
  EXPECT_TRUE((*rules)[2].and_later);
  EXPECT_DOUBLE_EQ((*rules)[2].probability, 0.25);
  EXPECT_EQ((*rules)[3].op, StoreOp::kRead);
  for (const StoreOp op : {StoreOp::kCreate, StoreOp::kAppend, StoreOp::kSync, StoreOp::kClose,
                           StoreOp::kRename, StoreOp::kRemove, StoreOp::kRead, StoreOp::kStat,
                           StoreOp::kList, StoreOp::kMkdir, StoreOp::kSyncDir}) {
    rules = ParseStoreFaultSpec(absl::StrCat(std::string(StoreOpName(op)), ":fail"));
    ASSERT_TRUE(rules.ok()) << StoreOpName(op);
    EXPECT_EQ((*rules)[0].op, op);
  }
  EXPECT_TRUE(ParseStoreFaultSpec("")->empty());
  EXPECT_TRUE(ParseStoreFaultSpec(" , ")->empty());

  for (const std::string bad : {"append", "explode:fail", "append:explode", "append:fail@0",
                                "append:fail@x", "append:fail@", "append:fail%2", "append:fail%",
                                "append:fail%-0.5", "append:fail@3junk", "append:fail junk"}) {
    SCOPED_TRACE(bad);
    const absl::Status status = ParseStoreFaultSpec(bad).status();
    EXPECT_TRUE(absl::IsInvalidArgument(status));
    EXPECT_NE(status.message().find(bad), absl::string_view::npos) << status;
  }
  const absl::Status status = ParseStoreFaultSpec("sync:fail,append:nope").status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("\"append:nope\""), absl::string_view::npos) << status;

  FaultInjectingStoreEnv env(PosixStoreEnv());
  ASSERT_TRUE(env.SetSpec("read:fail").ok());
  EXPECT_TRUE(absl::IsInvalidArgument(env.SetSpec("read:nope")));
  EXPECT_TRUE(absl::IsUnavailable(env.ReadFile("/nonexistent", 1).status()));  // rules kept
}

absl::StatusCode CodeOf(const std::string& mode) {
  return mode == "full" ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kUnavailable;
}

// The N-th op of a Put fails (for every N until a Put meets no fault), with every mode, to a
// session that has a version and to a new one: a failed Put returns the mode's code and leaves the
// previous version the newest, whole, and no temporary file behind; a Put that returns OK
// (a fault in removing the older version) published the new one.
TEST_F(SessionStoreTest, EveryFaultAtEveryStepOfAPutKeepsThePreviousVersion) {
  const std::string old_data = Bytes(1000, 3);
  const std::string new_data = Bytes((5u << 20) / 2, 4);  // three appends
  for (const bool existing : {true, false}) {
    for (const std::string mode : {"fail", "full", "tear"}) {
      int steps = 0;
      for (int n = 1;; ++n) {
        SCOPED_TRACE(absl::StrCat(existing ? "existing" : "new", " session, any:", mode, "@", n));
        ASSERT_LT(n, 100);
        Reset();
        FaultInjectingStoreEnv env(PosixStoreEnv());
        auto store = Open(&env);
        ASSERT_NE(store, nullptr);
        if (existing) {
          ASSERT_TRUE(store->Put(kId, 1, old_data).ok());
        }
        ASSERT_TRUE(env.SetSpec(absl::StrCat("any:", mode, "@", n)).ok());
        const absl::Status put = store->Put(kId, 2, new_data);
        const int64_t injected = env.injected_total();
        ASSERT_TRUE(env.SetSpec("").ok());

        absl::StatusOr<StoredVersion> newest = store->Newest(kId);
        if (put.ok()) {
          ASSERT_TRUE(newest.ok()) << newest.status();
          EXPECT_EQ(newest->version, 2);
          EXPECT_EQ(*store->Read(*newest), new_data);
        } else {
          EXPECT_EQ(put.code(), CodeOf(mode)) << put;
          EXPECT_EQ(injected, 1);
          if (existing) {
            ASSERT_TRUE(newest.ok()) << newest.status();
            EXPECT_EQ(newest->version, 1);
            EXPECT_EQ(*store->Read(*newest), old_data);
            EXPECT_EQ(Names(SessionDir(kId)), std::vector<std::string>{VersionName(1)});
          } else {
            EXPECT_TRUE(absl::IsNotFound(newest.status())) << newest.status();
            for (const std::string& name : Names(SessionDir(kId)))
              EXPECT_NE(name.substr(0, 5), ".tmp-") << name;
          }
        }
        if (injected == 0) {
          EXPECT_TRUE(put.ok()) << put;
          break;
        }
        ++steps;
      }
      // list, [mkdir, syncdir,] create, 3 appends, sync, close, rename, syncdir[, remove]
      EXPECT_GE(steps, 10);
    }
  }
}

// A crash at every step of a Put: the N-th op fails, or it and every later one (the process
// died there), then everything not synced is lost. The reopened store shows the previous version
// or the new one, whole, never a mix; and the new one whenever the Put returned OK.
TEST_F(SessionStoreTest, ACrashAtEveryStepOfAPutLeavesTheOldOrTheNewVersion) {
  const std::string old_data = Bytes(1000, 5);
  const std::string new_data = Bytes((3u << 20) / 2, 6);  // two appends
  for (const bool existing : {true, false}) {
    for (const std::string rule : {"fail@", "full@", "tear@", "fail@+", "tear@+"}) {
      for (int n = 1;; ++n) {
        std::string spec = absl::StrCat("any:", rule);
        spec.insert(spec.find('@') + 1, std::to_string(n));
        SCOPED_TRACE(absl::StrCat(existing ? "existing" : "new", " session, ", spec));
        ASSERT_LT(n, 100);
        Reset();
        FaultInjectingStoreEnv env(PosixStoreEnv());
        auto store = Open(&env);
        ASSERT_NE(store, nullptr);
        if (existing) {
          ASSERT_TRUE(store->Put(kId, 1, old_data).ok());
        }
        ASSERT_TRUE(env.SetSpec(spec).ok());
        const absl::Status put = store->Put(kId, 2, new_data);
        const int64_t injected = env.injected_total();
        ASSERT_TRUE(env.SetSpec("").ok());
        store.reset();
        ASSERT_TRUE(env.DropUnsyncedData().ok());

        store = Open(&env);
        ASSERT_NE(store, nullptr);
        absl::StatusOr<StoredVersion> newest = store->Newest(kId);
        if (put.ok()) {
          ASSERT_TRUE(newest.ok()) << newest.status();
          EXPECT_EQ(newest->version, 2);
        }
        if (newest.ok()) {
          absl::StatusOr<std::string> data = store->Read(*newest);
          ASSERT_TRUE(data.ok()) << data.status();
          if (newest->version == 2) {
            EXPECT_EQ(*data, new_data);
          } else {
            ASSERT_TRUE(existing);
            EXPECT_EQ(newest->version, 1);
            EXPECT_EQ(*data, old_data);
          }
        } else {
          EXPECT_FALSE(existing) << newest.status();
          EXPECT_TRUE(absl::IsNotFound(newest.status())) << newest.status();
        }
        for (const std::string& name : Names(SessionDir(kId)))
          EXPECT_NE(name.substr(0, 5), ".tmp-") << name;
        if (injected == 0) break;
      }
    }
  }
}

TEST_F(SessionStoreTest, DropUnsyncedDataCutsFilesToWhatWasSynced) {
  FaultInjectingStoreEnv env(PosixStoreEnv());
  const std::string synced_dir = root_ + "/synced";
  const std::string unsynced_dir = root_ + "/unsynced";
  ASSERT_TRUE(env.CreateDir(synced_dir).ok());
  ASSERT_TRUE(env.CreateDir(unsynced_dir).ok());
  auto a = *env.NewWritableFile(synced_dir + "/a");
  ASSERT_TRUE(a->Append("kept").ok());
  ASSERT_TRUE(a->Sync().ok());
  ASSERT_TRUE(a->Append(" lost").ok());
  ASSERT_TRUE(a->Close().ok());
  ASSERT_TRUE(env.SyncDir(synced_dir).ok());
  auto b = *env.NewWritableFile(unsynced_dir + "/b");  // its directory is never synced
  ASSERT_TRUE(b->Append("synced, but its name is not").ok());
  ASSERT_TRUE(b->Sync().ok());
  ASSERT_TRUE(b->Close().ok());
  EXPECT_EQ(Slurp(synced_dir + "/a"), "kept lost");

  ASSERT_TRUE(env.DropUnsyncedData().ok());
  EXPECT_EQ(Slurp(synced_dir + "/a"), "kept");
  EXPECT_FALSE(fs::exists(unsynced_dir + "/b"));
  ASSERT_TRUE(env.DropUnsyncedData().ok());  // nothing more to drop
  EXPECT_EQ(Slurp(synced_dir + "/a"), "kept");
}

TEST_F(SessionStoreTest, TornAppendWritesAPrefixThenFails) {
  FaultInjectingStoreEnv env(PosixStoreEnv());
  ASSERT_TRUE(env.SetSpec("append:tear@2").ok());
  auto file = *env.NewWritableFile(root_ + "/torn");
  ASSERT_TRUE(file->Append("whole").ok());
  const absl::Status torn = file->Append("0123456789");
  EXPECT_TRUE(absl::IsUnavailable(torn)) << torn;
  ASSERT_TRUE(file->Close().ok());
  EXPECT_EQ(Slurp(root_ + "/torn"), "whole01234");
  EXPECT_EQ(env.injected(StoreOp::kAppend), 1);
  EXPECT_EQ(env.injected_total(), 1);
}

// A spec `@PATH` follows the file: faults switch on and off while the store runs.
TEST_F(SessionStoreTest, ASpecFileSwitchesFaultsAtRunTime) {
  const std::string spec_file = root_ + "/faults";
  // Rewritten by rename, as a test driving a server would: a new inode, whatever the clock.
  auto set_faults = [&](const std::string& text) {
    WriteFile(spec_file + ".new", text);
    fs::rename(spec_file + ".new", spec_file);
  };
  FaultInjectingStoreEnv env(PosixStoreEnv());
  ASSERT_TRUE(env.SetSpec("@" + spec_file).ok());  // missing: no faults
  auto store = Open(&env);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Put(kId, 1, "one").ok());

  set_faults("append:full\n");
  EXPECT_TRUE(absl::IsResourceExhausted(store->Put(kId, 2, "two")));
  EXPECT_TRUE(absl::IsResourceExhausted(store->Put(kId, 2, "two")));
  EXPECT_EQ(env.injected(StoreOp::kAppend), 2);
  EXPECT_EQ(store->Newest(kId)->version, 1);

  set_faults("");
  EXPECT_TRUE(store->Put(kId, 2, "two").ok());

  set_faults("sync:fail@1");
  EXPECT_TRUE(absl::IsUnavailable(store->Put(kId, 3, "three")));
  EXPECT_TRUE(store->Put(kId, 3, "three").ok());  // only the first sync after the change
  EXPECT_EQ(env.injected(StoreOp::kSync), 1);

  set_faults("read:fail");
  EXPECT_TRUE(absl::IsUnavailable(store->Read({kId, 3, 5}).status()));
  set_faults("this is not a spec");  // bad: no faults
  EXPECT_TRUE(store->Read({kId, 3, 5}).ok());
  set_faults("read:fail");
  EXPECT_FALSE(store->Read({kId, 3, 5}).ok());
  fs::remove(spec_file);  // gone: no faults
  EXPECT_TRUE(store->Read({kId, 3, 5}).ok());
  EXPECT_EQ(env.injected(StoreOp::kRead), 2);
  EXPECT_EQ(env.injected_total(), 5);
}

TEST_F(SessionStoreTest, ProbabilisticFaultsRepeatWithTheSeed) {
  auto run = [&](uint64_t seed) {
    Reset();
    FaultInjectingStoreEnv env(PosixStoreEnv(), seed);
    auto store = Open(&env);
    EXPECT_TRUE(env.SetSpec("append:fail%0.5").ok());
    std::string outcomes;
    for (int v = 1; v <= 64; ++v) outcomes += store->Put(kId, v, "data").ok() ? '+' : '-';
    EXPECT_EQ(env.injected(StoreOp::kAppend),
              static_cast<int64_t>(std::count(outcomes.begin(), outcomes.end(), '-')));
    return outcomes;
  };
  const std::string first = run(7);
  EXPECT_EQ(run(7), first);
  const auto failures = std::count(first.begin(), first.end(), '-');
  EXPECT_GT(failures, 10);
  EXPECT_LT(failures, 54);
}

// Puts to different sessions from several threads, while another lists; under TSan in the tsan
// preset. Some appends fail (retried), so the fault env's bookkeeping is shared too.
TEST_F(SessionStoreTest, ConcurrentPutsToDifferentSessions) {
  FaultInjectingStoreEnv env(PosixStoreEnv(), 3);
  auto store = Open(&env);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(env.SetSpec("append:fail%0.2").ok());
  constexpr int kThreads = 6;
  constexpr int kVersions = 20;
  auto id_of = [](int t) { return absl::StrFormat("%032x", t + 1); };
  auto data_of = [](int t, int v) { return absl::StrCat("thread ", t, " version ", v); };
  std::atomic<bool> done{false};
  std::atomic<int> listed{0};
  std::thread lister([&] {
    while (!done.load()) {
      absl::StatusOr<std::vector<StoredVersion>> list = store->List();
      EXPECT_TRUE(list.ok()) << list.status();
      for (const StoredVersion& v : list.ok() ? *list : std::vector<StoredVersion>{}) {
        absl::StatusOr<std::string> data = store->Read(v);
        // Superseded meanwhile is fine; a torn or foreign read is not.
        if (data.ok()) {
          EXPECT_EQ(data->substr(0, 7), "thread ");
        } else {
          EXPECT_TRUE(absl::IsNotFound(data.status()) || absl::IsUnavailable(data.status()))
              << data.status();
        }
      }
      listed.fetch_add(1);
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (int v = 1; v <= kVersions; ++v) {
        absl::Status status;
        for (int attempt = 0; attempt < 50; ++attempt) {
          status = store->Put(id_of(t), v, data_of(t, v));
          if (status.ok()) break;
          EXPECT_TRUE(absl::IsUnavailable(status)) << status;
        }
        EXPECT_TRUE(status.ok()) << status;
      }
    });
  }
  for (std::thread& w : writers) w.join();
  done.store(true);
  lister.join();
  ASSERT_TRUE(env.SetSpec("").ok());
  EXPECT_GT(env.injected(StoreOp::kAppend), 0);
  EXPECT_GT(listed.load(), 0);

  absl::StatusOr<std::vector<StoredVersion>> list = store->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), static_cast<size_t>(kThreads));
  for (int t = 0; t < kThreads; ++t) {
    absl::StatusOr<StoredVersion> newest = store->Newest(id_of(t));
    ASSERT_TRUE(newest.ok());
    EXPECT_EQ(newest->version, kVersions);
    EXPECT_EQ(*store->Read(*newest), data_of(t, kVersions));
    EXPECT_EQ(Names(SessionDir(id_of(t))), std::vector<std::string>{VersionName(kVersions)});
  }
}

}  // namespace
}  // namespace mnemo::server

// --- ownership (replica mode): two stores on one directory play two replicas -------------------

namespace mnemo::server {
namespace {

SessionOwner Replica(const std::string& name) { return SessionOwner{0, name, name + ":50051"}; }

TEST_F(SessionStoreTest, ClaimsAreExclusiveAndFenceThePreviousOwner) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  absl::StatusOr<SessionOwner> owner = a->Owner(kId);
  ASSERT_TRUE(owner.ok()) << owner.status();
  EXPECT_EQ(owner->epoch, 0);

  absl::StatusOr<int64_t> epoch = a->Claim(kId, 0, Replica("a"));
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(*epoch, 1);
  // A second claim of the same epoch loses, whoever makes it.
  EXPECT_TRUE(absl::IsAborted(b->Claim(kId, 0, Replica("b")).status()));
  ASSERT_TRUE(a->Put(kId, 1, "a1").ok());
  ASSERT_TRUE(a->CheckClaim(kId).ok());

  owner = b->Owner(kId);
  ASSERT_TRUE(owner.ok());
  EXPECT_EQ(owner->epoch, 1);
  EXPECT_EQ(owner->replica, "a");
  EXPECT_EQ(owner->address, "a:50051");
  epoch = b->Claim(kId, owner->epoch, Replica("b"));
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(*epoch, 2);

  // A is fenced: it can neither publish nor delete, and the store is as B found it.
  EXPECT_TRUE(absl::IsAborted(a->CheckClaim(kId)));
  EXPECT_TRUE(absl::IsAborted(a->Put(kId, 2, "a2")));
  EXPECT_TRUE(absl::IsAborted(a->Delete(kId)));
  absl::StatusOr<StoredVersion> newest = b->Newest(kId);
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->version, 1);
  EXPECT_EQ(*b->Read(*newest), "a1");

  // B's versions outrank A's, even lower-numbered ones; its Put removes A's.
  ASSERT_TRUE(b->Put(kId, 1, "b1").ok());
  newest = a->Newest(kId);
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(newest->epoch, 2);
  EXPECT_EQ(*a->Read(*newest), "b1");
  EXPECT_EQ(Names(SessionDir(kId)),
            (std::vector<std::string>{"00000000000000000001-00000000000000000002.snap",
                                      "owner-00000000000000000002"}));
  // The older owner record is gone; a stale claim on an epoch already passed loses too.
  EXPECT_TRUE(absl::IsAborted(a->Claim(kId, 0, Replica("a")).status()));
  EXPECT_EQ(b->Owner(kId)->replica, "b");
}

TEST_F(SessionStoreTest, ReleaseRecordsNoOwnerAndTheNextClaimFollowsIt) {
  auto a = Open();
  auto b = Open();
  ASSERT_TRUE(a->Claim(kId, 0, Replica("a")).ok());
  ASSERT_TRUE(a->Put(kId, 3, "a3").ok());
  ASSERT_TRUE(a->Release(kId).ok());
  absl::StatusOr<SessionOwner> owner = b->Owner(kId);
  ASSERT_TRUE(owner.ok());
  EXPECT_EQ(owner->epoch, 2);
  EXPECT_TRUE(owner->replica.empty());
  // A let go: its claim is forgotten, so it no longer fences anything of its own.
  EXPECT_TRUE(a->CheckClaim(kId).ok());
  ASSERT_TRUE(b->Claim(kId, owner->epoch, Replica("b")).ok());
  EXPECT_EQ(*b->Read(*b->Newest(kId)), "a3");
  // A session deleted by its owner takes its owner records with it.
  ASSERT_TRUE(b->Delete(kId).ok());
  EXPECT_FALSE(fs::exists(SessionDir(kId)));
  EXPECT_EQ(b->Owner(kId)->epoch, 0);
}

TEST_F(SessionStoreTest, OwnerRecordsAndVersionNamesOfTheWrongFormAreRefusedOrIgnored) {
  auto store = Open();
  ASSERT_TRUE(store->Claim(kId, 0, Replica("a")).ok());
  // Names or addresses with line breaks would forge a record.
  EXPECT_TRUE(
      absl::IsInvalidArgument(store->Claim(kOtherId, 0, SessionOwner{0, "a\nb", ""}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(store->Claim("../x", 0, Replica("a")).status()));
  // A planted newest record that is not two printable lines is an error, not an owner.
  WriteFile(SessionDir(kId) + "/owner-00000000000000000009", std::string("x\x01y\n\n", 5));
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Owner(kId).status()));
  // Version names with an epoch of zero or of the wrong width are not versions.
  WriteFile(SessionDir(kId) + "/00000000000000000005-00000000000000000000.snap", "zero epoch");
  WriteFile(SessionDir(kId) + "/00000000000000000005-0000000000000000001.snap", "short epoch");
  EXPECT_TRUE(absl::IsNotFound(store->Newest(kId).status()));
}

TEST_F(SessionStoreTest, ConcurrentClaimsElectExactlyOneOwnerPerEpoch) {
  constexpr int kReplicas = 6;
  std::vector<std::unique_ptr<SessionStore>> stores;
  for (int i = 0; i < kReplicas; ++i) stores.push_back(Open());
  std::vector<bool> ever_won(kReplicas, false);
  for (int round = 0; round < 20; ++round) {
    const int64_t seen = stores[0]->Owner(kId)->epoch;
    std::vector<int> won(kReplicas, 0);
    std::vector<std::thread> threads;
    for (int i = 0; i < kReplicas; ++i) {
      threads.emplace_back([&, i] {
        won[i] = stores[i]->Claim(kId, seen, Replica(absl::StrCat("r", i))).ok() ? 1 : 0;
      });
    }
    for (std::thread& t : threads) t.join();
    const int winner = static_cast<int>(std::find(won.begin(), won.end(), 1) - won.begin());
    ASSERT_EQ(std::count(won.begin(), won.end(), 1), 1) << "round " << round;
    ever_won[winner] = true;
    EXPECT_EQ(stores[0]->Owner(kId)->epoch, seen + 1);
    EXPECT_EQ(stores[0]->Owner(kId)->replica, absl::StrCat("r", winner));
    // Only the winner may publish; every earlier owner is fenced.
    for (int i = 0; i < kReplicas; ++i) {
      if (!ever_won[i]) continue;
      EXPECT_EQ(stores[i]->Put(kId, round, "x").ok(), i == winner)
          << "round " << round << " r" << i;
    }
  }
}

}  // namespace
}  // namespace mnemo::server

namespace mnemo::server {
namespace {

TEST_F(SessionStoreTest, OwnerRecordsKeepTheTenantAcrossClaimsAndReleases) {
  auto a = Open();
  auto b = Open();
  SessionOwner owned = Replica("a");
  owned.tenant = "alice";
  ASSERT_TRUE(a->Claim(kId, 0, owned).ok());
  EXPECT_EQ(b->Owner(kId)->tenant, "alice");
  ASSERT_TRUE(a->Release(kId).ok());
  absl::StatusOr<SessionOwner> released = b->Owner(kId);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(released->replica, "");
  EXPECT_EQ(released->tenant, "alice") << "a release keeps the tenant";
  // A record without a tenant (written before tenants existed) still reads.
  ASSERT_TRUE(b->Claim(kId, released->epoch, Replica("b")).ok());
  EXPECT_EQ(a->Owner(kId)->tenant, "");
  SessionOwner bad = Replica("c");
  bad.tenant = "a\nb";
  EXPECT_EQ(a->Claim(kId, 3, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mnemo::server
