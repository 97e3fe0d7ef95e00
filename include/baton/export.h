/* baton: symbol visibility.  The shared library is built with
 * -fvisibility=hidden; only declarations marked BT_API are exported. */
#ifndef BATON_EXPORT_H
#define BATON_EXPORT_H

#if defined(BATON_STATIC_DEFINE)
#define BT_API
#elif defined(_WIN32)
#if defined(BATON_BUILDING)
#define BT_API __declspec(dllexport)
#else
#define BT_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define BT_API __attribute__((visibility("default")))
#else
#define BT_API
#endif

#endif /* BATON_EXPORT_H */
